//! [`ClientFrames`] on the client side: a real HPACK encoder (h2's client,
//! with its dynamic table and Huffman coding) writing through
//! [`RewrittenWrites`], read back on the other end of the socket.

use super::*;
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

#[tokio::test]
async fn a_set_authority_reaches_the_server_on_every_request() {
    let sent_as = b"%2Fvar%2Flib%2Fkubelet%2Fplugins_registry%2Fexample.dra.dev-reg.sock";
    let (client, mut server) = UnixStream::pair().unwrap();
    let client = RewrittenWrites::new(client, AuthorityRule::Set(sent_as.to_vec()));
    let (mut send, conn) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(conn);
    for i in 0..5 {
        let request = http::Request::post(format!("http://localhost/pluginregistration.Registration/GetInfo?{i}"))
            .header("te", "trailers")
            .body(())
            .unwrap();
        send = send.ready().await.unwrap();
        // No server answers: only what goes on the wire matters here.
        let _ = send.send_request(request, true).unwrap();
    }
    // The server's end, read as the host reads it.
    let mut frames = ClientFrames::new(AuthorityRule::ReplaceInvalid);
    let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), server.read_buf(&mut input))
            .await
            .expect("the client writes")
            .unwrap();
        assert!(n > 0);
        frames.process(&mut input, &mut output, &mut |event| seen.push(event));
    }
    for (i, event) in seen.into_iter().enumerate() {
        let Event::Block { stream, summary } = event else {
            panic!("request {i}: {event:?}");
        };
        assert_eq!(stream, 2 * i as u32 + 1);
        assert_eq!(
            summary.replaced_authority.as_deref().map(str::as_bytes),
            Some(&sent_as[..])
        );
        assert_eq!(
            summary.path,
            Some(format!("/pluginregistration.Registration/GetInfo?{i}"))
        );
    }
}

#[test]
fn a_stream_that_is_not_http2_passes_untouched() {
    let mut frames = ClientFrames::new(AuthorityRule::ReplaceInvalid);
    let mut input = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    let mut output = BytesMut::new();
    let mut events = Vec::new();
    frames.process(&mut input, &mut output, &mut |e| events.push(e));
    assert_eq!(&output[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        events,
        [Event::GaveUp("the client did not start with the HTTP/2 preface".into())]
    );
}
