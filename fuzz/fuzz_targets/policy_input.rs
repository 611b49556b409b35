#![no_main]
//! The policy input builder over arbitrary bodies, content types and queries.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: content-type \0 query \0 body.
    let mut parts = data.splitn(3, |&b| b == 0);
    let ct = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let headers = vec![("content-type".to_string(), ct)];
    let view = approvalplane::policy::input::HttpView {
        agent: "fuzz",
        upstream: "u",
        method: "POST",
        path: "/x",
        query: Some(&query),
        headers: &headers,
        body,
        justification: None,
        inject_header: None,
    };
    let _ = approvalplane::policy::input::http_input(&view, approvalplane::clock::Timestamp(0));
});
