//! What a query carries and returns, the same for both stores: positional parameters
//! ([`SqlValue`], built with `params!`) and rows of them ([`Row`]). Below `db` and `mysql`,
//! which both speak it.

/// One SQL value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(s.to_string())
    }
}
impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(s)
    }
}
impl From<&String> for SqlValue {
    fn from(s: &String) -> Self {
        SqlValue::Text(s.clone())
    }
}
impl From<Option<String>> for SqlValue {
    fn from(s: Option<String>) -> Self {
        s.map_or(SqlValue::Null, SqlValue::Text)
    }
}
impl From<&Option<String>> for SqlValue {
    fn from(s: &Option<String>) -> Self {
        s.clone().into()
    }
}
impl From<i64> for SqlValue {
    fn from(n: i64) -> Self {
        SqlValue::Int(n)
    }
}
impl From<u32> for SqlValue {
    fn from(n: u32) -> Self {
        SqlValue::Int(i64::from(n))
    }
}
impl From<i32> for SqlValue {
    fn from(n: i32) -> Self {
        SqlValue::Int(i64::from(n))
    }
}

/// Build a parameter vector: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::sql::SqlValue::from($v)),*] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<SqlValue>);

impl Row {
    pub(crate) fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(SqlValue::Text(s)) => s.clone(),
            Some(SqlValue::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(SqlValue::Text(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(SqlValue::Int(n)) => *n,
            Some(SqlValue::Text(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }
}
