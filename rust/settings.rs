//! The health-check settings of SPEC H, with their defaults and validation (H7).

use std::time::Duration;

use crate::error::{bad_setting, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn parse(text: &str) -> Result<Method> {
        match text.to_ascii_uppercase().as_str() {
            "GET" => Ok(Method::Get),
            "POST" => Ok(Method::Post),
            _ => Err(bad_setting(
                "health_method",
                "GET or POST",
                format!("{text:?}"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// Health-check settings. Build with `HealthSettings::default()` and `validate()`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub start_period_seconds: u64,
    pub timeout_seconds: f64,
    pub failure_threshold: u32,
    pub call_regularly: bool,
    pub period_seconds: f64,
    pub startup_timeout_seconds: f64,
    pub health_path: String,
    pub health_method: Method,
    pub allow_on_busy: bool,
    /// Replace when in-flight requests move no byte for this long (H9); `None` is off.
    pub stall_seconds: Option<f64>,
    /// Gateway (H5) and extra (R4) triggers start a new check at most this often.
    pub trigger_interval_seconds: f64,
    /// How many check outcomes `/status` keeps (H8).
    pub history_size: usize,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            start_period_seconds: 30,
            timeout_seconds: 5.0,
            failure_threshold: 3,
            call_regularly: true,
            period_seconds: 15.0,
            startup_timeout_seconds: 0.0,
            health_path: "/health".to_owned(),
            health_method: Method::Get,
            allow_on_busy: false,
            stall_seconds: None,
            trigger_interval_seconds: 1.0,
            history_size: 100,
        }
    }
}

fn positive(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(bad_setting(name, "a finite number > 0", value))
    }
}

fn non_negative(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(bad_setting(name, "a finite number >= 0", value))
    }
}

impl HealthSettings {
    /// Check every setting; the error names the first bad one (H7).
    pub fn validate(self) -> Result<Self> {
        positive("timeout_seconds", self.timeout_seconds)?;
        if self.failure_threshold < 1 {
            return Err(bad_setting(
                "failure_threshold",
                "an integer >= 1",
                self.failure_threshold,
            ));
        }
        positive("period_seconds", self.period_seconds)?;
        non_negative("startup_timeout_seconds", self.startup_timeout_seconds)?;
        if !self.health_path.starts_with('/') || self.health_path.chars().any(char::is_whitespace) {
            return Err(bad_setting(
                "health_path",
                "a path starting with '/' and without spaces",
                format!("{:?}", self.health_path),
            ));
        }
        if let Some(stall) = self.stall_seconds {
            positive("stall_seconds", stall)?;
        }
        non_negative("trigger_interval_seconds", self.trigger_interval_seconds)?;
        if self.history_size < 1 {
            return Err(bad_setting(
                "history_size",
                "an integer >= 1",
                self.history_size,
            ));
        }
        Ok(self)
    }

    /// H1: the start period is raised to the app's startup timeout when that is longer.
    pub fn effective_start_period(&self) -> Duration {
        Duration::from_secs_f64(
            (self.start_period_seconds as f64).max(self.startup_timeout_seconds),
        )
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_seconds)
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(self.period_seconds)
    }

    pub fn stall(&self) -> Option<Duration> {
        self.stall_seconds.map(Duration::from_secs_f64)
    }

    pub fn trigger_interval(&self) -> Duration {
        Duration::from_secs_f64(self.trigger_interval_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CoreError;

    #[test]
    fn h7_defaults_are_the_specs() {
        let s = HealthSettings::default().validate().unwrap();
        assert_eq!(s.start_period_seconds, 30);
        assert_eq!(s.timeout_seconds, 5.0);
        assert_eq!(s.failure_threshold, 3);
        assert!(s.call_regularly);
        assert_eq!(s.period_seconds, 15.0);
        assert_eq!(s.health_path, "/health");
    }

    #[test]
    fn h7_bad_settings_name_the_setting() {
        let cases: Vec<(HealthSettings, &str)> = vec![
            (
                HealthSettings {
                    failure_threshold: 0,
                    ..Default::default()
                },
                "failure_threshold",
            ),
            (
                HealthSettings {
                    timeout_seconds: 0.0,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    timeout_seconds: -1.0,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    timeout_seconds: f64::NAN,
                    ..Default::default()
                },
                "timeout_seconds",
            ),
            (
                HealthSettings {
                    period_seconds: 0.0,
                    ..Default::default()
                },
                "period_seconds",
            ),
            (
                HealthSettings {
                    startup_timeout_seconds: -3.0,
                    ..Default::default()
                },
                "startup_timeout_seconds",
            ),
            (
                HealthSettings {
                    health_path: "health".into(),
                    ..Default::default()
                },
                "health_path",
            ),
            (
                HealthSettings {
                    stall_seconds: Some(0.0),
                    ..Default::default()
                },
                "stall_seconds",
            ),
        ];
        for (settings, name) in cases {
            match settings.validate() {
                Err(CoreError::Setting { name: got, .. }) => assert_eq!(got, name),
                other => panic!("expected a {name} error, got {other:?}"),
            }
        }
        let err = HealthSettings {
            failure_threshold: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failure_threshold must be an integer >= 1, got 0"
        );
    }

    #[test]
    fn h1_start_period_is_raised_to_the_startup_timeout() {
        let s = HealthSettings {
            startup_timeout_seconds: 120.5,
            ..Default::default()
        };
        assert_eq!(s.effective_start_period(), Duration::from_secs_f64(120.5));
        let s = HealthSettings {
            startup_timeout_seconds: 10.0,
            ..Default::default()
        };
        assert_eq!(s.effective_start_period(), Duration::from_secs(30));
    }

    #[test]
    fn h7_method_parses_case_insensitively() {
        assert_eq!(Method::parse("post").unwrap(), Method::Post);
        assert!(Method::parse("DELETE").is_err());
    }
}
