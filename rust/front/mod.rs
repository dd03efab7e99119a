//! What the two fronts share (SPEC E): the proxy (`proxy/`, hyper in front of any server)
//! and the embedded front (`embedded/`, inside a Python ASGI server) ask the core the same
//! questions and get the same decisions; each front only translates them to its transport.
//!
//! | question | decided by |
//! |---|---|
//! | is the runner draining, and what is a refused request told (D1, D6, Q6) | `RunnerHandle::life`, `Answer::draining` |
//! | may this peer trigger a check, and what is it answered (H5) | `Trusted`, `RunnerHandle::trigger_and_wait`, `Answer::check` |
//! | the count of requests in flight the drain waits on (D2) | `RunnerHandle::request_started` / `request_finished` |
//! | may this request reach the app now, wait, or be refused (Q1, Q2) | `Door::enter`, `Answer::overloaded` |
//! | what an app's answer does to the runner (R1, R4) | `RunnerHandle::response` |
//! | the app's response asks a manual check (H6) | `RunnerHandle::manual` |
//! | a request past its timeout (Q3) | `Answer::timed_out`, `RunnerHandle::response(504)` |

pub mod answer;
pub mod trusted;

pub use answer::Answer;
pub use trusted::Trusted;
