//! The runner's door: how many requests are at the app at once.
//!
//! A request takes a permit before it is forwarded and keeps it until its response has
//! ended (a tunnel: until it closes). With `--app-protocol http1` each permit is one
//! connection to the app, so the connections runwarden opens to the app stay below
//! `max_app_connections`, whose default stays below the app's fd limit: no client can
//! exhaust the app's fds and fail its checks, which never pass through here. A request
//! over the limit waits for a permit in arrival order; a client that leaves while waiting
//! gives up its place at once, and its request never reaches the app.
//!
//! This is the place of SPEC Q: the concurrency limit, its queue's bounds and the
//! exclusive window of thorough checks belong here, between the drain and the forwarding.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::Hook;
use super::layer::{layer, Answer, Req};

layer! {
    /// The app's permits.
    DoorLayer => DoorService { permits: Arc<Semaphore> }
}

impl<S: super::layer::Inner> DoorService<S> {
    fn handle(&mut self, request: Req) -> Answer {
        let mut inner = self.inner.clone();
        let permits = Arc::clone(&self.permits);
        // Taken without waiting when one is free, which is the common case.
        let free = Arc::clone(&self.permits).try_acquire_owned().ok();
        Box::pin(async move {
            let permit = match free {
                Some(permit) => permit,
                None => match permits.acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => unreachable!("the door's semaphore is never closed"),
                },
            };
            let mut response = tower::Service::call(&mut inner, request).await?;
            response.body_mut().hook(Box::new(Held(permit)));
            Ok(response)
        })
    }
}

/// A permit, given back when the response ends.
struct Held(#[allow(dead_code)] OwnedSemaphorePermit);

impl Hook for Held {}
