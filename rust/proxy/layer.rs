//! What every layer of the data plane is: a tower `Layer` whose `Service` takes the
//! client's request and always answers (errors become responses), and the pieces that make
//! one without a heap allocation per request.
//!
//! Most layers look at the request, then either answer it themselves or pass it on and
//! look at the answer: their future is `Then`, the answer made now or the inner service's
//! followed by the layer's `Post`. The stack's futures nest into one value (the per-request
//! cost of a boxed future per layer was measured: benches/RESULTS.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use pin_project_lite::pin_project;

use super::body::ProxyBody;

pub type Req = http::Request<Incoming>;
pub type Resp = http::Response<ProxyBody>;

/// The service below a layer.
pub trait Inner:
    tower::Service<Req, Response = Resp, Error = Infallible, Future = Self::Answer>
    + Clone
    + Send
    + 'static
{
    type Answer: Future<Output = Result<Resp, Infallible>> + Send + 'static;
}

impl<T, F> Inner for T
where
    T: tower::Service<Req, Response = Resp, Error = Infallible, Future = F>
        + Clone
        + Send
        + 'static,
    F: Future<Output = Result<Resp, Infallible>> + Send + 'static,
{
    type Answer = F;
}

/// What a layer does with the inner service's answer.
pub trait Post: Send + 'static {
    fn post(self, response: Resp) -> Resp;
}

/// Nothing: the answer as it is.
impl Post for () {
    fn post(self, response: Resp) -> Resp {
        response
    }
}

pin_project! {
    /// A layer's answer: one it made now, or the inner service's, then `post`.
    #[project = ThenProj]
    pub enum Then<F, P> {
        // Boxed: answers made at once are rare, and a response is large; the stack's
        // futures nest, and each is moved into the next one out.
        Now { response: Option<Box<Resp>> },
        Later { #[pin] inner: F, post: Option<P> },
    }
}

impl<F, P> Then<F, P> {
    pub fn now(response: Resp) -> Self {
        Then::Now {
            response: Some(Box::new(response)),
        }
    }

    pub fn later(inner: F, post: P) -> Self {
        Then::Later {
            inner,
            post: Some(post),
        }
    }
}

impl<F, P> Future for Then<F, P>
where
    F: Future<Output = Result<Resp, Infallible>>,
    P: Post,
{
    type Output = Result<Resp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ThenProj::Now { response } => {
                Poll::Ready(Ok(*response.take().expect("an answer is taken once")))
            }
            ThenProj::Later { inner, post } => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                let post = post.take().expect("an answer is taken once");
                Poll::Ready(Ok(post.post(response)))
            }
        }
    }
}

/// Declare a layer `$layer` holding `fields`, and its service `$service<S>` holding the
/// same and the service below (`inner`). The service's `handle(&mut self, Req) -> $future`
/// is the layer's own; this writes the `Layer` and `Service` impls around it.
macro_rules! layer {
    (
        $(#[$meta:meta])*
        $layer:ident => $service:ident { $($field:ident : $ty:ty),* $(,)? }
        future $future:ty
    ) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $layer {
            $(pub $field: $ty,)*
        }

        #[derive(Clone)]
        pub struct $service<S> {
            inner: S,
            $($field: $ty,)*
        }

        impl<S> tower::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> $service<S> {
                $service {
                    inner,
                    $($field: self.$field.clone(),)*
                }
            }
        }

        impl<S: $crate::proxy::layer::Inner> tower::Service<$crate::proxy::layer::Req>
            for $service<S>
        {
            type Response = $crate::proxy::layer::Resp;
            type Error = std::convert::Infallible;
            type Future = $future;

            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $crate::proxy::layer::Req) -> Self::Future {
                self.handle(request)
            }
        }
    };
}
pub(crate) use layer;
