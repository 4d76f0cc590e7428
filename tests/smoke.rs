mod common;
use common::*;

#[tokio::test]
async fn proxies_a_get() {
    let backend = TestBackend::echo().await;
    let proxy = TestProxy::to(&[backend.addr], "headers: { debug: true }\n").await;
    let got = get(proxy.addr, "/hello?x=1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-uri"), Some("/hello?x=1"));
    assert_eq!(backend.request_count(), 1);
    proxy.shutdown().await;
}
