//! A client connection whose writes go through [`ClientFrames`]: how the
//! test kubelet sends the `:authority` the real kubelet's grpc-go sends,
//! which a tonic client (whose URIs must be valid) cannot.

use super::client::ClientFrames;
use super::headers::AuthorityRule;
use bytes::{Buf, BytesMut};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `T` with every byte written rewritten by [`ClientFrames`]; reads pass.
pub struct RewrittenWrites<T> {
    io: T,
    frames: ClientFrames,
    input: BytesMut,
    /// Rewritten, not yet written to `io`.
    pending: BytesMut,
}

impl<T> RewrittenWrites<T> {
    pub fn new(io: T, rule: AuthorityRule) -> Self {
        RewrittenWrites {
            io,
            frames: ClientFrames::new(rule),
            input: BytesMut::new(),
            pending: BytesMut::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> RewrittenWrites<T> {
    /// Write out everything already rewritten.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for RewrittenWrites<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RewrittenWrites<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.input.extend_from_slice(data);
        this.frames.process(&mut this.input, &mut this.pending, &mut |_| {});
        // Start writing now; what does not fit goes out on the next call or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.frames.finish(&mut this.input, &mut this.pending);
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// A gRPC channel over a Unix socket whose requests carry `authority` as
/// `:authority`, whatever it is: what the kubelet's grpc-go sends when it
/// dials a socket path with the `passthrough` resolver.
pub async fn connect_uds_with_authority(
    path: impl AsRef<Path>,
    authority: &[u8],
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.as_ref().to_owned();
    let rule = AuthorityRule::Set(authority.to_vec());
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (path, rule) = (path.clone(), rule.clone());
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(RewrittenWrites::new(stream, rule)))
            }
        }))
        .await
}
