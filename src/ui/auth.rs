//! Who is using the web page: signed session cookies, CSRF tokens and signed,
//! single-use sign-in links.
//!
//! Everything here is an HMAC-SHA256 over a small text payload, with one key per
//! purpose derived from one master key: the `store.hmac_key` secret when it is set
//! (so every replica accepts every other replica's cookies and links), else 32
//! random bytes per process (a restart signs everyone out).
//!
//! - **Session cookie**: `approver`, expiry, a random session id and a tag of the
//!   approver's credential (their token's digest, under the session key), signed.
//!   The server keeps no session table: an approver removed from the config is
//!   signed out at their next request because the page checks the live approver
//!   list, and rotating an approver's token (then a reload) ends every session
//!   opened before, because the tag no longer matches.
//! - **CSRF**: double-submit, bound to the session. The token is an HMAC of the
//!   session id, so it cannot be forged without the key and is useless with any
//!   other session. Before sign-in, the same scheme binds to a random pre-session
//!   cookie. Tokens are compared in constant time.
//! - **Sign-in link**: approver, approval id, expiry and a nonce, signed. Opening it
//!   (GET) changes nothing; only the confirming POST uses it up, through the
//!   store's `claim_once("link:<nonce>")`, which holds across replicas.
//!
//! This module does not render pages or decide who may see an approval.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::{Clock, Timestamp};
use crate::config::Secret;

type HmacSha256 = Hmac<Sha256>;

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a sign-in link may be used after it was minted.
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// Purpose-bound signing keys.
pub struct Keys {
    session: [u8; 32],
    link: [u8; 32],
    csrf: [u8; 32],
    /// Whether the master key is shared (from `store.hmac_key`).
    shared: bool,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("shared", &self.shared).finish_non_exhaustive()
    }
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal in constant time (for equal lengths).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Keys {
    /// Keys derived from `master` (the `store.hmac_key` secret), or random ones.
    pub fn new(master: Option<&Secret>) -> Keys {
        let (master, shared) = match master {
            Some(s) => (s.expose().as_bytes().to_vec(), true),
            None => {
                let mut b = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut b);
                (b, false)
            }
        };
        let derive = |label: &str| mac(&master, format!("approvalplane/ui/v1/{label}").as_bytes());
        Keys { session: derive("session"), link: derive("link"), csrf: derive("csrf"), shared }
    }

    pub fn shared(&self) -> bool {
        self.shared
    }

    /// `base64url(payload).base64url(mac)`.
    fn seal(key: &[u8], payload: &str) -> String {
        let sig = mac(key, payload.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(sig))
    }

    /// The payload of a sealed value, if the signature holds.
    fn unseal(key: &[u8], sealed: &str) -> Result<String, LinkError> {
        let (p, s) = sealed.split_once('.').ok_or(LinkError::Malformed)?;
        if p.len() > 1024 {
            return Err(LinkError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| LinkError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| LinkError::Malformed)?;
        let mut m =
            <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        m.update(&payload);
        // verify_slice compares in constant time.
        m.verify_slice(&sig).map_err(|_| LinkError::BadSignature)?;
        String::from_utf8(payload).map_err(|_| LinkError::Malformed)
    }

    /// A new session for `approver`, valid for [`SESSION_TTL`] from `now`, bound to
    /// `credential` (see [`Keys::credential_tag`]).
    pub fn new_session(&self, approver: &str, credential: &[u8], now: Timestamp) -> (Session, String) {
        let s = Session {
            approver: approver.to_string(),
            expires: now.plus(SESSION_TTL),
            sid: random_hex(16),
            credential: self.credential_tag(approver, credential),
        };
        let v = Self::seal(&self.session, &format!("s2\n{}\n{}\n{}\n{}", s.approver, s.expires.0, s.sid, s.credential));
        (s, v)
    }

    /// The session a cookie value stands for, if it is genuine and not expired.
    /// Whether its credential is still the approver's is the caller's check.
    pub fn open_session(&self, cookie: &str, now: Timestamp) -> Option<Session> {
        let payload = Self::unseal(&self.session, cookie).ok()?;
        let mut it = payload.split('\n');
        let (Some("s2"), Some(approver), Some(exp), Some(sid), Some(credential), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return None;
        };
        let expires = Timestamp(exp.parse().ok()?);
        (now < expires).then(|| Session {
            approver: approver.to_string(),
            expires,
            sid: sid.to_string(),
            credential: credential.to_string(),
        })
    }

    /// A keyed tag of what `approver` signs in with now (their token's digest; empty
    /// for an approver without a token), kept in the session. It reveals nothing of
    /// the token, and changes when the token does.
    pub fn credential_tag(&self, approver: &str, credential: &[u8]) -> String {
        let mut msg = format!("credential\n{approver}\n").into_bytes();
        msg.extend_from_slice(credential);
        hex::encode(&mac(&self.session, &msg)[..16])
    }

    /// Whether `s` was opened with the credential `approver` has now.
    pub fn session_current(&self, s: &Session, credential: &[u8]) -> bool {
        ct_eq(&s.credential, &self.credential_tag(&s.approver, credential))
    }

    /// The CSRF token of a session.
    pub fn csrf_for_session(&self, s: &Session) -> String {
        URL_SAFE_NO_PAD.encode(mac(&self.csrf, format!("session\n{}\n{}", s.sid, s.approver).as_bytes()))
    }

    /// The CSRF token of a pre-session cookie (sign-in forms).
    pub fn csrf_for_pre(&self, pre: &str) -> String {
        URL_SAFE_NO_PAD.encode(mac(&self.csrf, format!("pre\n{pre}").as_bytes()))
    }

    /// A fresh pre-session cookie value.
    pub fn new_pre() -> String {
        random_hex(16)
    }
}

/// A signed-in approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub approver: String,
    pub expires: Timestamp,
    /// Random; binds CSRF tokens to this session.
    pub sid: String,
    /// [`Keys::credential_tag`] of the credential the session was opened with.
    pub credential: String,
}

/// What a sign-in link says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    pub approver: String,
    pub approval_id: String,
    pub expires: Timestamp,
    pub nonce: String,
}

/// Why a sign-in link (or a signed value) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the sign-in link is malformed")]
    Malformed,
    #[error("the sign-in link's signature does not match")]
    BadSignature,
    #[error("the sign-in link has expired")]
    Expired,
    #[error("the sign-in link has already been used")]
    Used,
}

/// Mints and checks sign-in links. Shared by every notifier that delivers links to
/// one approver (personal pushes, Slack direct messages).
pub struct SignInLinks {
    keys: Arc<Keys>,
    public_url: String,
    clock: Arc<dyn Clock>,
    ttl: Duration,
}

impl std::fmt::Debug for SignInLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignInLinks").field("public_url", &self.public_url).field("ttl", &self.ttl).finish()
    }
}

impl SignInLinks {
    pub fn new(keys: Arc<Keys>, public_url: &str, clock: Arc<dyn Clock>) -> SignInLinks {
        SignInLinks { keys, public_url: public_url.trim_end_matches('/').to_string(), clock, ttl: LINK_TTL }
    }

    /// A link that signs `approver` in and opens `approval_id`; valid once, for
    /// [`LINK_TTL`]. Deliver it to that approver only (a DM or a personal push),
    /// never to a shared channel.
    pub fn mint_link(&self, approver: &str, approval_id: &str) -> String {
        format!("{}/ui/link/{}", self.public_url, self.mint_token(approver, approval_id, self.clock.now()))
    }

    /// The token part of a link minted at `now`.
    pub fn mint_token(&self, approver: &str, approval_id: &str, now: Timestamp) -> String {
        let expires = now.plus(self.ttl);
        let payload = format!("l1\n{approver}\n{approval_id}\n{}\n{}", expires.0, random_hex(16));
        Keys::seal(&self.keys.link, &payload)
    }

    /// Checks a token's signature and expiry. Does not use it up.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<LinkClaims, LinkError> {
        let payload = Keys::unseal(&self.keys.link, token)?;
        let mut it = payload.split('\n');
        let (Some("l1"), Some(approver), Some(approval_id), Some(exp), Some(nonce), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(LinkError::Malformed);
        };
        let expires = Timestamp(exp.parse().map_err(|_| LinkError::Malformed)?);
        if now >= expires {
            return Err(LinkError::Expired);
        }
        Ok(LinkClaims {
            approver: approver.to_string(),
            approval_id: approval_id.to_string(),
            expires,
            nonce: nonce.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn links(master: Option<&str>) -> (SignInLinks, ManualClock) {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let keys = Arc::new(Keys::new(master.map(Secret::new).as_ref()));
        (SignInLinks::new(keys, "https://ap.example.com/", Arc::new(clock.clone())), clock)
    }

    #[test]
    fn a_link_verifies_until_it_expires() {
        let (l, clock) = links(Some("k"));
        let url = l.mint_link("alice", "apr_00000000000000000001");
        let token = url.strip_prefix("https://ap.example.com/ui/link/").expect("link under /ui/link/");
        let c = l.verify(token, clock.now()).expect("valid");
        assert_eq!((c.approver.as_str(), c.approval_id.as_str()), ("alice", "apr_00000000000000000001"));
        clock.advance(LINK_TTL);
        assert_eq!(l.verify(token, clock.now()), Err(LinkError::Expired));
    }

    #[test]
    fn tampered_links_are_refused() {
        let (l, clock) = links(Some("k"));
        let token = l.mint_token("alice", "apr_1", clock.now());
        let (p, s) = token.split_once('.').expect("sealed");
        // Change the approver inside the payload, keep the signature.
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(p).expect("b64")).expect("utf8").replace("alice", "mallory"),
        );
        assert_eq!(l.verify(&format!("{forged}.{s}"), clock.now()), Err(LinkError::BadSignature));
        let mut sig = URL_SAFE_NO_PAD.decode(s).expect("b64");
        sig[0] ^= 1;
        assert_eq!(
            l.verify(&format!("{p}.{}", URL_SAFE_NO_PAD.encode(sig)), clock.now()),
            Err(LinkError::BadSignature)
        );
        assert_eq!(l.verify("nonsense", clock.now()), Err(LinkError::Malformed));
        // Another key (another deployment) does not accept it.
        let (other, _) = links(Some("other"));
        assert_eq!(other.verify(&token, clock.now()), Err(LinkError::BadSignature));
    }

    #[test]
    fn replicas_sharing_the_store_key_accept_each_others_values() {
        let a = Keys::new(Some(&Secret::new("shared")));
        let b = Keys::new(Some(&Secret::new("shared")));
        let now = Timestamp(1_800_000_000_000);
        let (s, cookie) = a.new_session("alice", b"cred", now);
        assert_eq!(b.open_session(&cookie, now), Some(s.clone()));
        assert_eq!(a.csrf_for_session(&s), b.csrf_for_session(&s));
        // Without a shared key, each process has its own.
        let c = Keys::new(None);
        assert_eq!(c.open_session(&cookie, now), None);
        assert!(!c.shared());
    }

    #[test]
    fn sessions_expire_and_csrf_is_bound_to_the_session() {
        let k = Keys::new(None);
        let now = Timestamp(1_800_000_000_000);
        let (s1, c1) = k.new_session("alice", b"cred", now);
        let (s2, _) = k.new_session("alice", b"cred", now);
        assert_ne!(k.csrf_for_session(&s1), k.csrf_for_session(&s2));
        assert!(k.open_session(&c1, now.plus(SESSION_TTL)).is_none());
        // A link token is not a session cookie, even under the same master key.
        let l = SignInLinks::new(Arc::new(Keys::new(None)), "http://x", Arc::new(crate::clock::SystemClock));
        assert!(k.open_session(&l.mint_token("alice", "apr_1", now), now).is_none());
        assert!(ct_eq("abc", "abc") && !ct_eq("abc", "abd") && !ct_eq("abc", "ab"));
    }

    #[test]
    fn a_session_is_current_only_for_the_credential_it_was_opened_with() {
        let k = Keys::new(None);
        let now = Timestamp(1_800_000_000_000);
        let (_, cookie) = k.new_session("alice", b"old-digest", now);
        let s = k.open_session(&cookie, now).expect("opens");
        assert!(k.session_current(&s, b"old-digest"));
        assert!(!k.session_current(&s, b"new-digest"), "a rotated token ends the session");
        assert!(!k.session_current(&s, b""));
        // The tag names the approver too: bob's session is not alice's.
        let (_, bob) = k.new_session("bob", b"old-digest", now);
        let mut b = k.open_session(&bob, now).expect("opens");
        b.approver = "alice".into();
        assert!(!k.session_current(&b, b"old-digest"));
        // The tag is not the credential.
        assert!(!s.credential.contains(&hex::encode(b"old-digest")));
    }
}
