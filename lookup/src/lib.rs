//! The IndiMail user and domain directory: virtual domains, mailboxes, aliases, cluster
//! placement and POP-before-SMTP relay, kept in IndiMail's own tables (spec 4.2) in either
//! MySQL/MariaDB (when `control/host.mysql` exists) or an embedded SQLite file
//! (`<home>/db/indimail.sqlite`), plus a per-shard lookup cache that plays inlookup's role
//! (spec 5).
//!
//! What it does:
//! * [`Directory`] — the per-shard, `!Send` query API used by the SMTP server (RCPT checks,
//!   AUTH), delivery (user, aliases, host) and the proxies: [`Directory::user_status`],
//!   [`Directory::check_password`], [`Directory::real_domain`], [`Directory::aliases`],
//!   [`Directory::host_of`], [`Directory::relay_allowed`], [`Directory::limits`], and the
//!   login records [`Directory::record_relay`] and [`Directory::record_lastauth`]. Answers go
//!   through a [`Cache`] (TTLs, negative entries, single flight, stale-while-refresh,
//!   invalidation by a change counter). Database failures are always temporary
//!   ([`LookupError::is_temporary`], [`SmtpReply::TEMPFAIL`]), never a 5xx.
//! * [`catchall`] — the domain's unknown-user handler in `.qmail-default` (vdelivermail's
//!   last argument), and [`Directory::recipient_status`] / [`Directory::destination`], which
//!   answer as vdelivermail does: mailbox, extension address (`QMAIL_EXT`), valias, catch-all.
//! * [`UserStatus::smtp_reply`] — the CHECKRECIPIENT replies (550 5.1.1, 550 5.2.1,
//!   552 5.2.2, 451 4.3.0) so the SMTP layer does not invent them.
//! * [`password`] — crypt(3) DES, `$1$`, `$5$`, `$6$`, yescrypt `$y$`, and `{CRAM}` forms, and
//!   the SCRAM-SHA-256 secrets of the `scram` column ([`ScramOptions`], `-m SCRAM-SHA-256`).
//! * [`Admin`] — the admin changes (vadddomain, vdeldomain, vadduser, vdeluser, vpasswd,
//!   vmoduser, valias, hostcntrl, vsetuserquota, vlimit), which also maintain the domain
//!   dirs, Maildirs and control files (`rcpthosts`, `morercpthosts`, `virtualdomains`).
//! * [`sqllist`] — the MySQL tables behind IndiMail's `.sql` list variants (`badmailfrom.sql`).
//! * [`cli`] — the `indimail domain|user|alias|hostcntrl|dbinfo|checkpassword` subcommands and the
//!   IndiMail program names (`vadddomain`, `vadduser`, ...) for the `indimail` binary.
//!
//! * Clustered directories (spec 4.1): `control/host.master` beside `host.mysql` (lookups read
//!   the local replica, writes go to the master, each read falls back to the other server) and
//!   `control/host.cntrl` (the clusterinfo tables on a central server), with one bounded pool
//!   per database server and process, whatever the number of shards (`mysql.rs`).
//! * Each domain's database server (spec 4.1): [`mcdinfo`] parses and writes IndiMail's MCD
//!   file `control/mcdinfo`; its domains' queries and admin writes go to their own server
//!   (`db.rs`, `Db::on`), and [`Admin::dbinfo_insert`] and its siblings are the `dbinfo`
//!   command's side (file and table).
//!
//! What it does not do: deliver mail, speak SMTP/IMAP, serve inlookup's FIFO protocol, build
//! `morercpthosts.cdb`, send HUP to other processes, or run IndiMail's cluster sync
//! (`hostsync`, nor the MCD file's sync from a newer `dbinfo` table). MySQL is reached without TLS (`ssl` in `host.mysql` is refused
//! with a clear error). Over-quota status is the BOUNCE_MAIL flag set by delivery; the
//! directory does not read `maildirsize`.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod admin;
pub mod cache;
pub mod catchall;
pub mod checkpassword;
pub mod cli;
mod config;
mod db;
mod directory;
mod error;
pub mod fsmode;
mod home_memo;
pub mod mcdinfo;
mod model;
mod mysql;
pub mod password;
mod queries;
mod schema;
mod sql;
pub mod sqllist;

pub use admin::{
    hash_dir, unix_now, Admin, ClusterHost, DomainChange, DomainInfo, DomainOptions,
    DomainSettings, HostEntry, McdChange, PasswordOptions, ScramOptions, StaleUser, UserChange,
    UserOptions, DEFAULT_HARD_QUOTA, DEFAULT_USERS_PER_LEVEL, RCPTHOSTS_MAX,
};
pub use cache::{Cache, CachePolicy, CacheStats, Clock, Lookup, ManualClock, SystemClock};
pub use config::{BackendConfig, DirectoryConfig, MysqlConfig, DEFAULT_MYSQL_CONNECTIONS};
pub use directory::{Destination, Directory, HomeAnswer, RefreshMode, SharedUser, UserHome};
pub use error::LookupError;
pub use home_memo::HOME_MEMO_MS;
pub use model::{
    bucket, normalize_domain, Address, AuthResult, LastAuth, Limits, MailStore, Quota, SmtpReply,
    User, UserFlags, UserStatus, MAX_DOMAIN_LEN, MAX_GECOS_LEN, MAX_PASSWD_LEN, MAX_USER_LEN,
};
pub use password::HashMethod;
pub use schema::Dialect;
