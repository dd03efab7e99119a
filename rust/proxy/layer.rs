//! What every layer of the data plane is: a tower `Layer` whose `Service` takes the
//! client's request and always answers (errors become responses), and the boilerplate that
//! makes one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;

use super::body::ProxyBody;

pub type Req = http::Request<Incoming>;
pub type Resp = http::Response<ProxyBody>;
pub type Answer = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

/// The service below a layer.
pub trait Inner:
    tower::Service<Req, Response = Resp, Error = Infallible, Future = Answer> + Clone + Send + 'static
{
}

impl<T> Inner for T where
    T: tower::Service<Req, Response = Resp, Error = Infallible, Future = Answer>
        + Clone
        + Send
        + 'static
{
}

/// An answer ready now.
pub fn ready(response: Resp) -> Answer {
    Box::pin(std::future::ready(Ok(response)))
}

/// Declare a layer `$layer` holding `fields`, and its service `$service<S>` holding the
/// same and the service below (`inner`). The service's `handle(&mut self, Req) -> Answer`
/// is the layer's own; this writes the `Layer` and `Service` impls around it.
macro_rules! layer {
    (
        $(#[$meta:meta])*
        $layer:ident => $service:ident { $($field:ident : $ty:ty),* $(,)? }
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
            type Future = $crate::proxy::layer::Answer;

            fn poll_ready(
                &mut self,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $crate::proxy::layer::Req) -> $crate::proxy::layer::Answer {
                self.handle(request)
            }
        }
    };
}
pub(crate) use layer;
