//! The data plane (SPEC P): the proxy port and the admin port, served by hyper on a tokio
//! runtime of the core's own threads, which never hold the GIL.
//!
//! A request on the proxy port meets the layers in the order `stack` assembles them, one
//! module each, named after its rule:
//!
//! | layer | module | rules |
//! |---|---|---|
//! | metrics | `metrics.rs` | A: requests by status and source, their duration |
//! | access log | `access_log.rs` | `--access-log` |
//! | refusals | `refusals.rs` | S3, S5: what RFC 9112 refuses and hyper lets through |
//! | drain | `drain.rs` | D1, D6: refused while draining, `Connection: close`, 503 at the deadline |
//! | trigger | `trigger.rs` | H5: trusted gateways' checks, answered here |
//! | in flight | `inflight.rs` | D2, H9: the count the drain waits on |
//! | door | `door.rs` | Q1, Q2, Q6: the concurrency limit, its queue, the checks' window |
//! | judge | `judge.rs` | R1, R4, H6: the app's answers, judged once |
//! | deadline | `deadline.rs` | Q3: the request timeout (its 504 is judged as R4 says) |
//! | headers | `headers.rs` | S2, S4 |
//! | forward | `forward.rs` | R3, S1, S3; `tunnel.rs` for upgrades |
//!
//! Connections (`listener.rs`, `conn.rs`, `io.rs`) carry S6: the cap, the timeouts, the
//! lingering close. The drain's course (`drain::course`) is the one owner of draining.

pub mod access_log;
pub mod address;
pub mod admin;
pub mod answer;
pub mod body;
pub mod conn;
pub mod deadline;
pub mod door;
pub mod drain;
pub mod extended_connect;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod inflight;
pub mod io;
pub mod judge;
pub mod layer;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod pool;
pub mod refusals;
pub mod sniff;
pub mod trigger;
pub mod tunnel;
pub mod upload;

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderName;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::oneshot;
use tower::Layer;

use crate::door::Limits;
use crate::error::{CoreError, Result};
use crate::metrics::Metrics;
use crate::runner::RunnerHandle;
use crate::settings::ProxySettings;
use crate::verdict::Event;
use crate::worker::{lock, Worker};
use body::ProxyBody;
use conn::{ConnState, Timeouts};
use layer::{Inner, Req};
use listener::Port;
use log::Log;

/// The most bytes of a request head (HTTP/1.1) or header list (HTTP/2): nginx allows 32 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// HTTP/2 streams a client may have open at once on one connection (nginx's default).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// RST_STREAMs of streams not yet answered that a client may send before its connection is
/// closed (CVE-2023-44487, rapid reset).
const MAX_PENDING_RESETS: usize = 20;
/// File descriptors kept out of the client connection cap: the admin port, the checks,
/// NVML, logs and the supervisor, and room for the app's connections.
const RESERVED_FDS: usize = 256;
/// The admin port's connection cap: probes and scrapes, not traffic.
const ADMIN_CONNECTIONS: usize = 64;
/// The most connections to the app `max_app_connections=auto` derives.
const MAX_APP_CONNECTIONS: usize = 1024;

/// The fd limits: the soft limit runwarden was started with (the app keeps it) and the one
/// in force once raised to the hard limit, as Go does.
#[derive(Debug, Clone, Copy)]
pub struct FdLimits {
    pub original: usize,
    pub current: usize,
}

/// Raise the soft fd limit to the hard one, once; the limits before and after.
pub fn fd_limits() -> FdLimits {
    static LIMITS: std::sync::OnceLock<FdLimits> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return FdLimits {
                    original: 1024,
                    current: 1024,
                };
            }
            let original = limit.rlim_cur as usize;
            let hard = if limit.rlim_max == libc::RLIM_INFINITY {
                1 << 20
            } else {
                limit.rlim_max
            };
            let mut current = original;
            if limit.rlim_cur < hard {
                let raised = libc::rlimit {
                    rlim_cur: hard,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    current = hard as usize;
                }
            }
            FdLimits { original, current }
        }
    })
}

/// Client connections the proxy port holds with `max_connections=auto`: each being
/// answered holds one app connection too, so half of what is left once the reserve is set
/// aside (S6).
pub fn auto_connections(fds: usize) -> usize {
    (fds.saturating_sub(RESERVED_FDS) / 2).max(1)
}

/// Connections to the app with `max_app_connections=auto`: a quarter of the fd limit the
/// app is given, at most `MAX_APP_CONNECTIONS`.
pub fn auto_app_connections(app_fds: usize) -> usize {
    (app_fds / 4).clamp(1, MAX_APP_CONNECTIONS)
}

/// The connections to the app `settings` allow (`max_app_connections`, or derived).
pub fn app_connections(settings: &ProxySettings) -> usize {
    settings
        .max_app_connections
        .unwrap_or_else(|| auto_app_connections(fd_limits().original))
}

/// SPEC Q2: the door's bounds. With no `max_concurrency`, only the app's connections bound
/// it, and requests over them wait as long as it takes; with one, at most that many (and
/// never more than the app's connections), the queue and its wait bounded.
pub fn door_limits(settings: &ProxySettings) -> Limits {
    let connections = app_connections(settings);
    match settings.max_concurrency {
        0 => Limits::permits(connections),
        n => Limits {
            limit: n.min(connections),
            queue: Some(settings.max_queue.unwrap_or(n.saturating_mul(4))),
            queue_timeout: Some(Duration::from_secs_f64(settings.queue_timeout_seconds)),
        },
    }
}

/// What the data plane serves with, besides its settings.
pub struct Wiring {
    pub app_url: String,
    pub runner: RunnerHandle,
    pub metrics: Arc<Metrics>,
    /// The `/status` document, rendered when asked.
    pub status: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// G7: ask the compute canary to run now (`POST /canary`); false when it is off.
    pub canary: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Both ports, bound; served once started. The embedded front (SPEC E) has no proxy port:
/// the app's server takes the traffic, and only the admin port and the drain's course run
/// here.
pub struct DataPlane {
    pub proxy: Option<Arc<Port>>,
    pub admin: Arc<Port>,
    pub max_app_connections: usize,
    drain: std::sync::OnceLock<Arc<drain::DrainState>>,
    log: Log,
    pending: Mutex<Option<Pending>>,
    running: Mutex<Option<Running>>,
}

struct Pending {
    settings: ProxySettings,
    proxy: Option<std::net::TcpListener>,
    admin: std::net::TcpListener,
}

struct Running {
    worker: Worker,
    stop: oneshot::Sender<()>,
    runtime: tokio::runtime::Handle,
}

fn bind(host: &str, port: u16) -> Result<std::net::TcpListener> {
    let failed = |why: String| CoreError::Bind(format!("cannot listen on {host}:{port}: {why}"));
    let address: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("the host has no address".into()))?;
    let listener = std::net::TcpListener::bind(address).map_err(|e| failed(e.to_string()))?;
    // A backlog that holds a burst of clients while the runtime accepts.
    // SAFETY: listen() on a socket this process owns; it changes only its backlog.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    listener
        .set_nonblocking(true)
        .map_err(|e| failed(e.to_string()))?;
    Ok(listener)
}

impl DataPlane {
    /// Bind both ports now (a port in use is an error here, before the app starts); with
    /// `proxy` false, the admin port only (the embedded front).
    pub fn bind(settings: ProxySettings, log: Log, proxy: bool) -> Result<DataPlane> {
        let s = &settings;
        let fds = fd_limits();
        let cap = s
            .max_connections
            .unwrap_or_else(|| auto_connections(fds.current));
        let safe = auto_connections(fds.current);
        if cap > safe {
            log.warn(format!(
                "--max-connections {cap} is more than the fd limit allows ({} fds: {safe} \
                 connections); a flood can exhaust runwarden's fds",
                fds.current
            ));
        }
        let max_app_connections = app_connections(s);
        if s.max_concurrency > max_app_connections {
            log.warn(format!(
                "--max-concurrency {} is more than the connections to the app allow \
                 ({max_app_connections}, --max-app-connections): at most \
                 {max_app_connections} requests will be at the app at once",
                s.max_concurrency
            ));
        }
        let timeouts = Timeouts::new(
            Duration::from_secs_f64(s.header_timeout_seconds),
            Duration::from_secs_f64(s.keep_alive_seconds),
            Duration::from_secs_f64(s.send_timeout_seconds),
        );
        let proxy = proxy.then(|| bind(&s.host, s.port)).transpose()?;
        let admin = bind(&s.admin_host, s.admin_port)?;
        Ok(DataPlane {
            proxy: proxy
                .is_some()
                .then(|| Port::new("proxy", cap, timeouts, log.clone())),
            admin: Port::new("admin", ADMIN_CONNECTIONS, timeouts, log.clone()),
            max_app_connections,
            drain: std::sync::OnceLock::new(),
            log,
            pending: Mutex::new(Some(Pending {
                settings,
                proxy,
                admin,
            })),
            running: Mutex::new(None),
        })
    }

    /// Serve both ports on the data plane's runtime (`proxy_threads` threads).
    pub fn start(&self, wiring: Wiring) -> Result<()> {
        let Some(pending) = lock(&self.pending).take() else {
            return Err(CoreError::State(
                "the data plane was already started".into(),
            ));
        };
        let threads = pending.settings.proxy_threads;
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("runwarden-proxy")
                .enable_all()
                .build()
        }
        .map_err(|e| CoreError::State(format!("could not start the data plane: {e}")))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = self.serve(pending, wiring);
        let worker = Worker::spawn("proxy", move || {
            runtime.block_on(async move {
                served.await;
                let _ = stopped.await;
            });
            runtime.shutdown_background();
        })
        .map_err(|e| CoreError::State(format!("could not start the data plane's thread: {e}")))?;
        *lock(&self.running) = Some(Running {
            worker,
            stop,
            runtime: handle,
        });
        Ok(())
    }

    /// The tasks that serve: both accept loops and the drain's course.
    fn serve(
        &self,
        pending: Pending,
        wiring: Wiring,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let Pending {
            settings,
            proxy,
            admin,
        } = pending;
        let proxy_port = self.proxy.clone();
        let admin_port = Arc::clone(&self.admin);
        let drain_state = Arc::clone(
            self.drain
                .get_or_init(|| drain::DrainState::new(wiring.runner.life())),
        );
        let max_app_connections = self.max_app_connections;
        let log = self.log.clone();
        async move {
            let builder = Arc::new(server_builder());
            let admin_state = Arc::new(admin::AdminState {
                life: wiring.runner.life(),
                metrics: Arc::clone(&wiring.metrics),
                status: wiring.status,
                canary: wiring.canary,
                trusted: crate::front::Trusted::new(&settings.check_trusted_sources),
            });
            let settings = &settings;
            let stack = Stack::new(
                &wiring.runner,
                &wiring.metrics,
                &drain_state,
                &log,
                settings,
                &wiring.app_url,
                max_app_connections,
            );
            let (Ok(proxy), Ok(admin)) = (
                proxy.map(tokio::net::TcpListener::from_std).transpose(),
                tokio::net::TcpListener::from_std(admin),
            ) else {
                log.warn("the data plane could not take its listeners".into());
                return;
            };
            tokio::spawn(drain::course(
                drain_state,
                wiring.runner.clone(),
                proxy_port.clone(),
                settings.drain_timeout(),
                log.clone(),
            ));
            tokio::spawn(
                Arc::clone(&admin_port).run(admin, Arc::clone(&builder), move |conn| {
                    admin::Admin {
                        state: Arc::clone(&admin_state),
                        conn,
                    }
                }),
            );
            if let (Some(port), Some(proxy)) = (proxy_port, proxy) {
                port.on_unparsed(stack.unparsed());
                tokio::spawn(port.run(proxy, builder, move |conn| ConnService {
                    stack: stack.build(&conn),
                    conn,
                }));
            }
        }
    }

    /// D2: a second stop signal; stop waiting for requests in flight.
    pub fn hurry(&self) {
        if let Some(drain) = self.drain.get() {
            drain.hurry();
        }
    }

    /// D6, after the drain: stop listening on the proxy port, answer what had arrived, let
    /// idle connections linger for a request on its way, then close them; `Event::Closed`
    /// says when. The admin port keeps answering until runwarden exits.
    pub fn close(&self) {
        let running = lock(&self.running);
        let (Some(running), Some(proxy)) = (running.as_ref(), self.proxy.clone()) else {
            self.log.event(Event::Closed { cut: 0 });
            return;
        };
        let log = self.log.clone();
        running.runtime.spawn(async move {
            let cut = proxy.close(tokio::time::Instant::now()).await;
            log.event(Event::Closed { cut: cut as u64 });
        });
    }

    /// The runtime serving the ports, once started (the embedded front's waits run there).
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        lock(&self.running).as_ref().map(|r| r.runtime.clone())
    }

    /// Stop the runtime (every connection closes) and join its thread within `timeout`.
    pub fn stop(&self, timeout: Duration) -> bool {
        let Some(running) = lock(&self.running).take() else {
            return true;
        };
        let _ = running.stop.send(());
        running.worker.join_within(timeout)
    }
}

/// hyper's server: HTTP/1.1 and HTTP/2 with prior knowledge, with their limits (S6).
fn server_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        // runwarden's own timeouts apply (conn.rs): hyper's would also be the keep-alive.
        .header_read_timeout(None)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // RFC 8441: WebSocket over HTTP/2 (`extended_connect.rs`).
        .enable_connect_protocol()
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
}

/// What every connection's stack is built from.
struct Stack {
    runner: RunnerHandle,
    metrics: Arc<Metrics>,
    drain: Arc<drain::DrainState>,
    log: Log,
    access_log: bool,
    check_header: HeaderName,
    trusted: crate::front::Trusted,
    h9: bool,
    request_timeout: Option<Duration>,
    /// Whether a front proxy in front of trusted loopback checks was warned of (H5).
    front_proxy_warned: Arc<std::sync::atomic::AtomicBool>,
    forward: Arc<forward::Shared>,
}

impl Stack {
    fn new(
        runner: &RunnerHandle,
        metrics: &Arc<Metrics>,
        drain_state: &Arc<drain::DrainState>,
        log: &Log,
        settings: &ProxySettings,
        app_url: &str,
        max_app_connections: usize,
    ) -> Stack {
        let address = address::AppAddress::parse(app_url).expect("the runner validated app_url");
        let h9 = runner.h9();
        Stack {
            runner: runner.clone(),
            metrics: Arc::clone(metrics),
            drain: Arc::clone(drain_state),
            log: log.clone(),
            access_log: settings.access_log,
            check_header: HeaderName::from_bytes(settings.check_header.as_bytes())
                .expect("a validated header name"),
            trusted: crate::front::Trusted::new(&settings.check_trusted_sources),
            h9,
            request_timeout: settings
                .request_timeout_seconds
                .map(Duration::from_secs_f64),
            front_proxy_warned: Arc::default(),
            forward: Arc::new(forward::Shared {
                pool: pool::Pool::new(&address, settings.app_protocol, max_app_connections),
                h2c: settings.app_protocol == crate::settings::AppProtocol::H2c,
                address,
                body_timeout: Duration::from_secs_f64(settings.client_body_timeout_seconds),
                tunnel_idle: Duration::from_secs_f64(settings.tunnel_idle_timeout_seconds),
                log: log.clone(),
            }),
        }
    }

    /// A head hyper refused itself (400, 414, 431) is counted and logged as the metrics and
    /// access log layers would have, had it reached them (source `runwarden`).
    fn unparsed(&self) -> listener::Unparsed {
        let metrics = Arc::clone(&self.metrics);
        let log = self.access_log.then(|| self.log.clone());
        Box::new(move |conn, status| {
            metrics.request(status, crate::metrics::Source::Runwarden);
            if let Some(log) = &log {
                log.event(Event::Access(access_log::unparsed(conn, status)));
            }
        })
    }

    /// One connection's stack, in the order a request meets it.
    fn build(&self, conn: &Arc<ConnState>) -> impl Inner + Sync {
        let forward = forward::Forward {
            shared: Arc::clone(&self.forward),
            conn: Arc::clone(conn),
        };
        let layers = (
            metrics::MetricsLayer {
                metrics: Arc::clone(&self.metrics),
            },
            access_log::AccessLogLayer {
                log: self.log.clone(),
                on: self.access_log,
                conn: Arc::clone(conn),
            },
            refusals::Refusals {
                conn: Arc::clone(conn),
            },
            drain::DrainLayer {
                state: Arc::clone(&self.drain),
            },
            trigger::TriggerLayer {
                header: self.check_header.clone(),
                trusted: self.trusted.clone(),
                runner: self.runner.clone(),
                conn: Arc::clone(conn),
                log: self.log.clone(),
                warned: Arc::clone(&self.front_proxy_warned),
            },
            inflight::InFlightLayer {
                runner: self.runner.clone(),
                h9: self.h9,
            },
            door::DoorLayer {
                door: Arc::clone(self.runner.door()),
                metrics: Arc::clone(&self.metrics),
                drain: Arc::clone(&self.drain),
                conn: Arc::clone(conn),
            },
            judge::JudgeLayer {
                runner: self.runner.clone(),
                header: self.check_header.clone(),
            },
            deadline::DeadlineLayer {
                timeout: self.request_timeout,
                runner: self.runner.clone(),
            },
            headers::Headers {
                conn: Arc::clone(conn),
            },
        );
        let (m, a, r, d, t, i, o, j, l, h) = layers;
        let inner = l.layer(h.layer(forward));
        m.layer(a.layer(r.layer(d.layer(t.layer(i.layer(o.layer(j.layer(inner))))))))
    }
}

/// The proxy port's service for one connection: its stack, and the counts its timeouts
/// read.
#[derive(Clone)]
struct ConnService<S> {
    stack: S,
    conn: Arc<ConnState>,
}

impl<S: Inner + Sync> hyper::service::Service<http::Request<Incoming>> for ConnService<S> {
    type Response = http::Response<ProxyBody>;
    type Error = Infallible;
    type Future = layer::Then<S::Answer, conn::Active>;

    fn call(&self, request: Req) -> Self::Future {
        let active = self.conn.request_started();
        if request.version() == http::Version::HTTP_2 {
            self.conn.set_h2();
        }
        let answer = tower::Service::call(&mut self.stack.clone(), request);
        layer::Then::later(answer, active)
    }
}
