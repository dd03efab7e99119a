//! How the core declares a setting: once, with its name, type, bounds, default and help
//! (SPEC H7, C). The `settings!` macro turns one declaration per field into the struct, its
//! `Default`, its `SPECS` table (exported to Python, which builds the command line, the
//! environment names and `/status` from it) and a checked `set` by name.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{CoreError, Result};

/// What a setting holds and which values it accepts; anything else stops start-up (H7).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A whole number, at least `min`.
    Int {
        min: i64,
    },
    /// A finite number above `min` (`strict`) or at least `min`.
    Number {
        min: f64,
        strict: bool,
    },
    /// A number as `Number`, or None: off.
    OptionalNumber {
        min: f64,
        strict: bool,
    },
    Bool,
    /// True, false, or None: derived from other settings (the help says how).
    OptionalBool,
    /// A URL path: starts with '/', no whitespace.
    Path,
    /// One of these words, case-insensitive.
    Choice(&'static [&'static str]),
    /// Text, or None: the default the help names.
    OptionalText,
    /// A set of XID numbers.
    Xids,
    /// Warning rule → seconds sustained (`temperature=60,power_brake=30`).
    Promotions,
    /// GPUs to watch: indices, `GPU-…` UUIDs or `MIG-…` UUIDs; None: every GPU.
    GpuSelectors,
    /// A TCP port, 1-65535.
    Port,
    /// A listen address: a host name or IP address, not empty, no whitespace.
    Host,
    /// Any text, empty included.
    Text,
    /// An HTTP header name (an RFC 9110 token) that the proxy does not frame, drop or set
    /// itself (`proxy::headers::RESERVED`).
    HeaderName,
    /// IP networks in CIDR notation (an address alone is its own /32 or /128); normalised.
    Networks,
    /// A whole number of at least `min`, or None: derived at start-up ("auto").
    Auto {
        min: i64,
    },
}

/// A setting's value, as it crosses to Python and back.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Int(i64),
    Number(f64),
    Bool(bool),
    Text(String),
    Xids(BTreeSet<u64>),
    Promotions(BTreeMap<String, f64>),
    Texts(Vec<String>),
}

/// One declared setting.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Kind {
    /// The name of the kind, as Python's settings table reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Int { .. } => "int",
            Kind::Number { .. } => "number",
            Kind::OptionalNumber { .. } => "optional_number",
            Kind::Bool => "bool",
            Kind::OptionalBool => "optional_bool",
            Kind::Path => "path",
            Kind::Choice(_) => "choice",
            Kind::OptionalText => "optional_text",
            Kind::Xids => "xids",
            Kind::Promotions => "promotions",
            Kind::GpuSelectors => "gpus",
            Kind::Port => "port",
            Kind::Host => "host",
            Kind::Text => "text",
            Kind::HeaderName => "header_name",
            Kind::Networks => "networks",
            Kind::Auto { .. } => "auto",
        }
    }

    /// The Python type a value must have, as a type error says it.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Int { .. } => "an integer",
            Kind::Number { .. } => "a number",
            Kind::OptionalNumber { .. } => "a number or None",
            Kind::Bool => "True or False",
            Kind::OptionalBool => "True, False or None",
            Kind::Path | Kind::Choice(_) => "a string",
            Kind::OptionalText => "a string or None",
            Kind::Xids => "a list of XID numbers",
            Kind::Promotions => "a dict of warning name to seconds",
            Kind::GpuSelectors => "a list of GPU indices or UUIDs, or None",
            Kind::Port | Kind::Auto { .. } => "an integer",
            Kind::Host | Kind::Text | Kind::HeaderName => "a string",
            Kind::Networks => "a list of addresses or CIDR networks",
        }
    }

    /// What is allowed, as an error message and the help say it.
    pub fn expected(self) -> String {
        let bound = |min: f64, strict: bool| {
            let min = crate::scheduler::trim_float(min);
            format!("a finite number {} {min}", if strict { ">" } else { ">=" })
        };
        match self {
            Kind::Int { min } => format!("an integer >= {min}"),
            Kind::Number { min, strict } => bound(min, strict),
            Kind::OptionalNumber { min, strict } => format!("{} or off", bound(min, strict)),
            Kind::Bool => "true or false".to_owned(),
            Kind::OptionalBool => "true or false, or unset".to_owned(),
            Kind::Path => "a path starting with '/' and without spaces".to_owned(),
            Kind::Choice(words) => words.join(" or "),
            Kind::OptionalText => "text".to_owned(),
            Kind::Xids => "XID numbers >= 0".to_owned(),
            Kind::Promotions => "warning names with seconds >= 0".to_owned(),
            Kind::GpuSelectors => "GPU indices, GPU-… or MIG-… UUIDs, or all".to_owned(),
            Kind::Port => "a TCP port 1-65535".to_owned(),
            Kind::Host => "a host name or IP address".to_owned(),
            Kind::Text => "text".to_owned(),
            Kind::HeaderName => {
                "an HTTP header name that the proxy does not frame or set itself".to_owned()
            }
            Kind::Networks => "addresses or CIDR networks, such as 10.0.0.0/8".to_owned(),
            Kind::Auto { min } => format!("an integer >= {min}, or auto"),
        }
    }

    /// The value if this kind allows it (its type and its bounds); an error naming the
    /// setting otherwise.
    pub fn check(self, name: &'static str, value: Value) -> Result<Value> {
        let wrong = |got: String| CoreError::Setting {
            name,
            expected: self.expected(),
            got,
        };
        let number_ok = |n: f64, min: f64, strict: bool| {
            n.is_finite() && if strict { n > min } else { n >= min }
        };
        match (self, value) {
            (Kind::Int { min } | Kind::Auto { min }, Value::Int(n)) if n >= min => {
                Ok(Value::Int(n))
            }
            (Kind::Auto { .. }, Value::None) => Ok(Value::None),
            (Kind::Port, Value::Int(n)) if (1..=65535).contains(&n) => Ok(Value::Int(n)),
            (Kind::Host, Value::Text(t)) if !t.is_empty() && !t.contains(char::is_whitespace) => {
                Ok(Value::Text(t))
            }
            (Kind::Text, Value::Text(t)) => Ok(Value::Text(t)),
            (Kind::HeaderName, Value::Text(t))
                if is_token(&t) && !crate::proxy::headers::is_reserved(&t) =>
            {
                Ok(Value::Text(t.to_ascii_lowercase()))
            }
            (Kind::Networks, Value::Texts(items)) => items
                .iter()
                .map(|item| parse_network(item).map(|net| net.to_string()))
                .collect::<Option<Vec<_>>>()
                .map(Value::Texts)
                .ok_or_else(|| wrong(format!("{items:?}"))),
            (Kind::Number { min, strict }, Value::Number(n))
            | (Kind::OptionalNumber { min, strict }, Value::Number(n))
                if number_ok(n, min, strict) =>
            {
                Ok(Value::Number(n))
            }
            (
                Kind::OptionalNumber { .. } | Kind::OptionalText | Kind::GpuSelectors,
                Value::None,
            ) => Ok(Value::None),
            (Kind::GpuSelectors, Value::Texts(items))
                if items.iter().all(|s| {
                    s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty()
                        || s.starts_with("GPU-")
                        || s.starts_with("MIG-")
                }) =>
            {
                Ok(Value::Texts(items))
            }
            (Kind::Bool | Kind::OptionalBool, Value::Bool(b)) => Ok(Value::Bool(b)),
            (Kind::OptionalBool, Value::None) => Ok(Value::None),
            (Kind::Path, Value::Text(t))
                if t.starts_with('/') && !t.contains(char::is_whitespace) =>
            {
                Ok(Value::Text(t))
            }
            (Kind::Choice(words), Value::Text(t)) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(&t))
                .map(|w| Value::Text((*w).to_owned()))
                .ok_or_else(|| wrong(format!("{t:?}"))),
            (Kind::OptionalText, Value::Text(t)) => Ok(Value::Text(t)),
            (Kind::Xids, Value::Xids(x)) => Ok(Value::Xids(x)),
            (Kind::Promotions, Value::Promotions(p))
                if p.values().all(|s| number_ok(*s, 0.0, false)) =>
            {
                Ok(Value::Promotions(p))
            }
            (_, value) => Err(wrong(value.shown())),
        }
    }
}

/// RFC 9110 5.6.2: a token, as a header name must be.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An address or a CIDR network; an address alone is its own /32 or /128.
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

impl Value {
    /// The value as an error message shows what was given.
    pub fn shown(&self) -> String {
        match self {
            Value::None => "None".to_owned(),
            Value::Int(n) => n.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(t) => format!("{t:?}"),
            Value::Xids(x) => format!("{x:?}"),
            Value::Promotions(p) => format!("{p:?}"),
            Value::Texts(t) => format!("{t:?}"),
        }
    }
}

/// A field's Rust type and its `Value`. `from_value` sees only values its kind checked.
pub trait Setting: Sized {
    fn to_value(&self) -> Value;
    fn from_value(value: Value) -> Option<Self>;
}

macro_rules! int_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn to_value(&self) -> Value {
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
            fn from_value(value: Value) -> Option<Self> {
                match value {
                    Value::Int(n) => <$t>::try_from(n).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_setting!(u16, u32, u64, usize);

impl Setting for f64 {
    fn to_value(&self) -> Value {
        Value::Number(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
}

impl Setting for Option<f64> {
    fn to_value(&self) -> Value {
        self.map_or(Value::None, Value::Number)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::None => Some(None),
            Value::Number(n) => Some(Some(n)),
            _ => None,
        }
    }
}

impl Setting for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl Setting for Option<bool> {
    fn to_value(&self) -> Value {
        self.map_or(Value::None, Value::Bool)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::None => Some(None),
            Value::Bool(b) => Some(Some(b)),
            _ => None,
        }
    }
}

impl Setting for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

impl Setting for Option<String> {
    fn to_value(&self) -> Value {
        self.clone().map_or(Value::None, Value::Text)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::None => Some(None),
            Value::Text(t) => Some(Some(t)),
            _ => None,
        }
    }
}

impl Setting for Vec<String> {
    fn to_value(&self) -> Value {
        Value::Texts(self.clone())
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Texts(t) => Some(t),
            _ => None,
        }
    }
}

impl Setting for Option<usize> {
    fn to_value(&self) -> Value {
        self.map_or(Value::None, |n| {
            Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
        })
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::None => Some(None),
            Value::Int(n) => usize::try_from(n).ok().map(Some),
            _ => None,
        }
    }
}

impl Setting for Option<Vec<String>> {
    fn to_value(&self) -> Value {
        self.clone().map_or(Value::None, Value::Texts)
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::None => Some(None),
            Value::Texts(t) => Some(Some(t)),
            _ => None,
        }
    }
}

impl Setting for BTreeSet<u64> {
    fn to_value(&self) -> Value {
        Value::Xids(self.clone())
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Xids(x) => Some(x),
            _ => None,
        }
    }
}

impl Setting for BTreeMap<String, f64> {
    fn to_value(&self) -> Value {
        Value::Promotions(self.clone())
    }
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Promotions(p) => Some(p),
            _ => None,
        }
    }
}

/// Declare a setting that is one of a few words: the enum, its words (`WORDS`, for
/// `Kind::Choice`) and its `Setting` conversion.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($variant:ident = $word:literal),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const WORDS: &'static [&'static str] = &[$($word),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),* }
            }
        }

        impl $crate::setting::Setting for $name {
            fn to_value(&self) -> $crate::setting::Value {
                $crate::setting::Value::Text(self.as_str().to_owned())
            }
            fn from_value(value: $crate::setting::Value) -> Option<Self> {
                match value {
                    $($crate::setting::Value::Text(t) if t == $word => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use choice;

/// Declare a settings struct: each field once, with its type, default, kind and help (its
/// doc comment).
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                #[doc = $help:literal]
                $field:ident : $ty:ty = $default:expr, $kind:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( #[doc = $help] pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $name {
            /// Every setting of this struct, in declaration order.
            pub const SPECS: &'static [$crate::setting::Spec] = &[
                $( $crate::setting::Spec {
                    name: stringify!($field),
                    kind: $kind,
                    help: $help.trim_ascii(),
                }, )*
            ];

            /// Set one setting by name, checked against its kind; the error names it.
            pub fn set(&mut self, name: &str, value: $crate::setting::Value) -> $crate::error::Result<()> {
                use $crate::setting::Setting as _;
                match name {
                    $( stringify!($field) => {
                        let checked = ($kind).check(stringify!($field), value)?;
                        self.$field = <$ty>::from_value(checked.clone()).ok_or_else(|| {
                            $crate::error::bad_setting(
                                stringify!($field),
                                "a value its type holds",
                                checked.shown(),
                            )
                        })?;
                        Ok(())
                    } )*
                    _ => Err($crate::setting::unknown(name, Self::SPECS)),
                }
            }

            /// Every setting's value, in declaration order.
            pub fn values(&self) -> Vec<(&'static str, $crate::setting::Value)> {
                use $crate::setting::Setting as _;
                vec![ $( (stringify!($field), self.$field.to_value()), )* ]
            }

            /// Each setting against its own kind (the cross-setting rules are the struct's).
            pub fn check_each(&self) -> $crate::error::Result<()> {
                for (spec, (_, value)) in Self::SPECS.iter().zip(self.values()) {
                    spec.kind.check(spec.name, value)?;
                }
                Ok(())
            }
        }
    };
}
pub(crate) use settings;

/// The error for a name no setting has.
pub fn unknown(name: &str, specs: &[Spec]) -> CoreError {
    let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
    CoreError::Unknown {
        name: name.to_owned(),
        known: known.join(", "),
    }
}
