//! What the core tells Python: finished checks, the replacement verdict, GPU findings, and
//! what the data plane has to say (log lines, the drain's end).

use std::time::Duration;

use crate::nvml::sample::GpuSample;
use crate::nvml::Found;

/// Why a check ran. One check can serve several triggers (H5 shares a running check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The schedule (H3).
    Regular,
    /// A gateway request carrying the check header (H5).
    Gateway,
    /// An app response of 500, 502 or 504 (R4).
    Extra,
    /// An app response carrying the check header (H6).
    Manual,
    /// With `call_regularly=false`, probes until the app first passes, to open readiness.
    Startup,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Regular => "regular",
            Trigger::Gateway => "gateway",
            Trigger::Extra => "extra",
            Trigger::Manual => "manual",
            Trigger::Startup => "startup",
        }
    }
}

/// How a finished check was counted under H4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// It passed: the failure count is reset.
    Pass,
    /// A failure counted toward `failure_threshold`.
    Counted,
    /// A failure ignored: the runner was younger than the start period when it was sent (H4).
    StartPeriod,
    /// A failure ignored: requests were in flight and moving bytes (H9).
    Busy,
    /// A failed manual check (H6): replaces at once.
    Manual,
    /// A failed startup probe with `call_regularly=false`: readiness stays closed.
    NotReady,
    /// Finished after the replacement verdict; changes nothing.
    AfterReplace,
    /// A failure of runwarden's own, not the app's: no file descriptor, buffer or memory
    /// to send the check with (S6). Never counted, never replaces.
    Local,
}

impl Counted {
    pub fn as_str(self) -> &'static str {
        match self {
            Counted::Pass => "pass",
            Counted::Counted => "counted",
            Counted::StartPeriod => "start_period",
            Counted::Busy => "busy",
            Counted::Manual => "manual",
            Counted::NotReady => "not_ready",
            Counted::AfterReplace => "after_replace",
            Counted::Local => "local",
        }
    }
}

/// What a probe saw: a status, or an error (connection refused, timeout, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency: Duration,
    /// The check could not be sent for a reason of runwarden's own (S6).
    pub local: bool,
}

impl ProbeReport {
    /// A 2xx with nothing wrong besides (a gRPC check's answer can be 200 and not serving).
    pub fn passed(&self) -> bool {
        matches!(self.status, Some(200..=299)) && self.error.is_none()
    }

    /// What the probe saw, as a person reads it: "status 500", "connection refused".
    pub fn describe(&self) -> String {
        match (&self.status, &self.error) {
            (_, Some(error)) => error.clone(),
            (Some(status), None) => format!("status {status}"),
            (None, None) => "no answer".to_owned(),
        }
    }
}

/// One finished check (H8).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: u64,
    pub triggers: Vec<Trigger>,
    pub report: ProbeReport,
    /// Runner age when the check was sent.
    pub age: Duration,
    /// Clock time when it finished (for rate limiting).
    pub finished_at: Duration,
    pub counted: Counted,
    pub consecutive_failures: u32,
    /// This pass made the runner ready (its first, A).
    pub made_ready: bool,
}

/// Why the runner drains: a clean stop, or a reason to replace it. Each has its exit code
/// (SPEC D4); the one table of reasons, codes and meanings, exported to Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// SIGTERM, SIGINT or SIGHUP to runwarden: drain and exit 0; not a replacement.
    Shutdown,
    HealthCheck,
    ManualCheck,
    App503,
    GpuFault,
    Stalled,
    AppExited,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Shutdown,
        Reason::HealthCheck,
        Reason::ManualCheck,
        Reason::App503,
        Reason::GpuFault,
        Reason::Stalled,
        Reason::AppExited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Shutdown => "shutdown",
            Reason::HealthCheck => "health_check",
            Reason::ManualCheck => "manual_check",
            Reason::App503 => "app_503",
            Reason::GpuFault => "gpu_fault",
            Reason::Stalled => "stalled",
            Reason::AppExited => "app_exited",
        }
    }

    /// runwarden's exit code for this reason (SPEC D4).
    pub fn exit_code(self) -> i32 {
        match self {
            Reason::Shutdown => 0,
            Reason::HealthCheck => 10,
            Reason::ManualCheck => 11,
            Reason::App503 => 12,
            Reason::GpuFault => 13,
            Reason::Stalled => 14,
            Reason::AppExited => 15,
        }
    }

    /// When it happens, as the README and `--help` say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Reason::Shutdown => "SIGTERM/SIGINT/SIGHUP: drained, stopped the app, exited (D4)",
            Reason::HealthCheck => "failure_threshold consecutive health checks failed (H4)",
            Reason::ManualCheck => "a manual check requested by the app failed (H6)",
            Reason::App503 => "the app answered a request with 503 (R1)",
            Reason::GpuFault => "a fatal GPU condition (G2, G6)",
            Reason::Stalled => "in-flight requests moved no byte for stall_seconds (H9)",
            Reason::AppExited => "the supervised app exited by itself (D5)",
        }
    }

    /// Every reason but a clean stop replaces the runner.
    pub fn replaces(self) -> bool {
        self != Reason::Shutdown
    }

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// Why the runner drains, and since when. Sent once; the first reason wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub reason: Reason,
    pub detail: String,
    pub age: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Check(Outcome),
    /// The runner drains (D1): its verdict.
    Verdict(Verdict),
    /// One sample of every GPU (G4), with what it cost to take.
    GpuSamples {
        samples: Vec<GpuSample>,
        cost: Duration,
    },
    /// A GPU warning or fault (G2, G3).
    GpuFinding(Found),
    /// GPU monitoring started, or is off and why (sent once).
    GpuMonitoring {
        enabled: bool,
        detail: String,
    },
    /// A line for runwarden's log, from the data plane.
    Log(LogLine),
    /// One proxied request, for the access log (`--access-log`).
    Access(AccessLine),
    /// The drain's wait for requests in flight is over (D2, D6): how many were still in
    /// flight at its deadline, answered 503 or cut. Then the ports may close.
    Drained(Drained),
    /// Both ports are closed (D6): how many connections had to be cut at the deadline.
    Closed {
        cut: u64,
    },
    /// Embedded (E4): call the app's health route on its loop and answer check `call`.
    AppCheck {
        call: u64,
    },
    /// Embedded: a request's wait at the door (Q2) is over; `call` names the wait.
    Entered {
        call: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// "debug", "info", "warning" or "error".
    pub level: &'static str,
    pub logger: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLine {
    pub client: String,
    pub method: String,
    pub target: String,
    pub version: &'static str,
    /// 499: the client left before its answer.
    pub status: u16,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Requests in flight when the drain's wait ended (0: all finished in time).
    pub in_flight: u64,
    /// Of those, answered 503 with Retry-After (their response had not started).
    pub answered: u64,
    /// Of those, cut mid-response (streams and tunnels).
    pub cut: u64,
}
