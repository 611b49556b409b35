//! Upstream TLS: real rustls connections with certificates generated in the test.

use crate::harness::*;

#[tokio::test]
async fn upstream_over_tls_trusted_through_ca_file() {
    let pki = test_pki();
    let up = FakeUpstream::start(Some(pki.server.clone())).await;
    let mut o = Options::new(&up);
    o.upstream_url = format!("https://localhost:{}", up.addr.port());
    o.ca_pem = Some(pki.ca_pem.clone());
    let app = TestApp::start(o).await;
    let r = app.refund(2000, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.count(), 1);
    assert_eq!(up.received()[0].headers.get("authorization").unwrap(), UPSTREAM_SECRET);
}

#[tokio::test]
async fn a_wrong_ca_fails_with_a_clear_502_and_nothing_is_forwarded() {
    let pki = test_pki();
    let other = test_pki();
    let up = FakeUpstream::start(Some(pki.server.clone())).await;
    let mut o = Options::new(&up);
    o.upstream_url = format!("https://localhost:{}", up.addr.port());
    o.ca_pem = Some(other.ca_pem.clone());
    let app = TestApp::start(o).await;
    let r = app.refund(2000, &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_type(), "upstream_unreachable");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("certificate") || msg.contains("issuer"), "{msg}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn an_approved_request_survives_an_unreachable_upstream() {
    // The upstream is down when the approval lands: the connect failure leaves the
    // grant unused, so a retry once it is back is forwarded.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let up = FakeUpstream::start(None).await;
    let mut o = Options::new(&up);
    o.upstream_url = format!("http://127.0.0.1:{port}");
    o.server_toml = "hold_timeout = \"200ms\"\n".into();
    let app = TestApp::start(o).await;
    let r = app.refund(240000, &[]).await;
    let id = r.json()["error"]["approval_id"].as_str().unwrap().to_string();
    assert_eq!(app.decide(ALICE, &id, "approve", None).await.status, 200);
    let r = app.refund(240000, &[]).await;
    assert_eq!((r.status, r.error_type().as_str()), (502, "upstream_unreachable"));
    let r = app.refund(240000, &[("prefer", "wait=0")]).await;
    assert_eq!((r.status, r.error_type().as_str()), (502, "upstream_unreachable"), "the grant was not used up");
}
