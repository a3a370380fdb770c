//! `max_connections` bounds everything in flight, WebSocket connections for as long as they stay open.

mod common;

use std::time::Duration;

use common::client;

#[tokio::test]
async fn an_open_websocket_holds_its_connection_until_it_closes() {
    let mut config = common::test_config();
    config.max_connections = 1;
    let base = common::start(config);
    let models = || async { client().get(format!("{base}/v1/models")).send().await.unwrap().status().as_u16() };
    assert_eq!(models().await, 200, "nothing else in flight");

    let url = format!("{}/v1/ws", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
    // The socket is the one connection allowed: other requests are turned away while it is open.
    assert_eq!(models().await, 503, "the open socket counts against max_connections");

    ws.close(None).await.unwrap();
    drop(ws);
    let mut status = 0;
    for _ in 0..50 {
        status = models().await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "closing the socket gives its connection back");
}
