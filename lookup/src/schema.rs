//! IndiMail's tables (spec 4.2): same names, columns and MySQL types. The SQLite form is
//! derived from the same description (types keep their names, which SQLite maps to its
//! affinities; `ON UPDATE`, `unsigned`, index prefix lengths and inline index clauses are
//! dropped). Tables are created when missing and never altered; the schema version is
//! recorded in `ischema`.
//!
//! One table is ours: `dir_changes`, a single row whose `counter` every admin change made
//! through this crate increments, so that each shard's cache can notice changes cheaply.

/// Version recorded in `ischema` when this crate creates the schema.
pub(crate) const SCHEMA_COMMENT: &str = "indimail-rs schema 1";

const TS: &str =
    "timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP";

struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    primary: Option<&'static str>,
    unique: &'static [&'static str],
    indexes: &'static [&'static str],
    timestamp: bool,
}

const USER_COLUMNS: &[&str] = &[
    "pw_name char(40) NOT NULL",
    "pw_domain char(67) NOT NULL",
    "pw_passwd char(128) NOT NULL",
    "pw_uid int",
    "pw_gid int",
    "pw_gecos char(48) NOT NULL",
    "pw_dir char(156)",
    "pw_shell char(30)",
    "scram char(255)",
];

const TABLES: &[Table] = &[
    Table {
        name: "indimail",
        columns: USER_COLUMNS,
        primary: Some("pw_name, pw_domain"),
        unique: &[],
        indexes: &["pw_gecos(25)", "pw_uid"],
        timestamp: true,
    },
    Table {
        name: "indibak",
        columns: USER_COLUMNS,
        primary: Some("pw_name, pw_domain"),
        unique: &[],
        indexes: &["pw_gecos(25)", "pw_uid"],
        timestamp: true,
    },
    Table {
        name: "hostcntrl",
        columns: &[
            "pw_name char(40) NOT NULL",
            "pw_domain char(67) NOT NULL",
            "pw_passwd char(128) NOT NULL",
            "host char(64) NOT NULL",
        ],
        primary: Some("pw_name, pw_domain"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "host_table",
        columns: &["host char(64) NOT NULL", "ipaddr char(46) NOT NULL"],
        primary: Some("host"),
        unique: &[],
        indexes: &["ipaddr"],
        timestamp: true,
    },
    Table {
        name: "smtp_port",
        columns: &[
            "host char(64) NOT NULL",
            "src_host char(64) NOT NULL",
            "domain char(64) NOT NULL",
            "port int NOT NULL",
        ],
        primary: Some("domain, host, src_host"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "relay",
        columns: &[
            "email char(96) NOT NULL",
            "ipaddr char(46) NOT NULL",
            "timestamp int NOT NULL",
        ],
        primary: None,
        unique: &["email, ipaddr"],
        indexes: &["ipaddr", "timestamp"],
        timestamp: false,
    },
    Table {
        name: "lastauth",
        columns: &[
            "user char(40) NOT NULL",
            "domain char(67) NOT NULL",
            "service char(10) NOT NULL",
            "remote_ip char(46) NOT NULL",
            "quota int NOT NULL",
            "gecos char(48) NOT NULL",
        ],
        primary: Some("user, domain, service"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "userquota",
        columns: &[
            "user char(40) NOT NULL",
            "domain char(67) NOT NULL",
            "quota bigint unsigned NOT NULL",
        ],
        primary: Some("user, domain"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "valias",
        columns: &[
            "alias char(40) NOT NULL",
            "domain char(67) NOT NULL",
            "valias_line char(190) NOT NULL",
        ],
        primary: None,
        unique: &["alias, domain, valias_line"],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "aliasdomain",
        columns: &["alias char(64) NOT NULL", "domain char(67) NOT NULL"],
        primary: Some("alias"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "dir_control",
        columns: &[
            "domain char(67) NOT NULL",
            "cur_users int NOT NULL DEFAULT 0",
            "level_cur int NOT NULL DEFAULT 0",
            "level_max int NOT NULL DEFAULT 3",
            "level_start0 int NOT NULL DEFAULT 0",
            "level_start1 int NOT NULL DEFAULT 0",
            "level_start2 int NOT NULL DEFAULT 0",
            "level_end0 int NOT NULL DEFAULT 61",
            "level_end1 int NOT NULL DEFAULT 61",
            "level_end2 int NOT NULL DEFAULT 61",
            "level_mod0 int NOT NULL DEFAULT 0",
            "level_mod1 int NOT NULL DEFAULT 2",
            "level_mod2 int NOT NULL DEFAULT 4",
            "level_index0 int NOT NULL DEFAULT 0",
            "level_index1 int NOT NULL DEFAULT 0",
            "level_index2 int NOT NULL DEFAULT 0",
            "the_dir char(156) NOT NULL",
        ],
        primary: None,
        unique: &["domain"],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "vlimits",
        columns: &[
            "domain char(67) NOT NULL",
            "domain_expiry INT(10) NOT NULL DEFAULT -1",
            "passwd_expiry INT(10) NOT NULL DEFAULT -1",
            "maxpopaccounts INT(10) NOT NULL DEFAULT -1",
            "maxaliases INT(10) NOT NULL DEFAULT -1",
            "maxforwards INT(10) NOT NULL DEFAULT -1",
            "maxautoresponders INT(10) NOT NULL DEFAULT -1",
            "maxmailinglists INT(10) NOT NULL DEFAULT -1",
            "diskquota BIGINT unsigned NOT NULL DEFAULT 0",
            "maxmsgcount BIGINT unsigned NOT NULL DEFAULT 0",
            "defaultquota BIGINT NOT NULL DEFAULT 0",
            "defaultmaxmsgcount BIGINT unsigned NOT NULL DEFAULT 0",
            "disable_pop TINYINT(1) NOT NULL DEFAULT 0",
            "disable_imap TINYINT(1) NOT NULL DEFAULT 0",
            "disable_dialup TINYINT(1) NOT NULL DEFAULT 0",
            "disable_passwordchanging TINYINT(1) NOT NULL DEFAULT 0",
            "disable_webmail TINYINT(1) NOT NULL DEFAULT 0",
            "disable_relay TINYINT(1) NOT NULL DEFAULT 0",
            "disable_smtp TINYINT(1) NOT NULL DEFAULT 0",
            "perm_account TINYINT(2) NOT NULL DEFAULT 0",
            "perm_alias TINYINT(2) NOT NULL DEFAULT 0",
            "perm_forward TINYINT(2) NOT NULL DEFAULT 0",
            "perm_autoresponder TINYINT(2) NOT NULL DEFAULT 0",
            "perm_maillist TINYINT(4) NOT NULL DEFAULT 0",
            "perm_quota TINYINT(2) NOT NULL DEFAULT 0",
            "perm_defaultquota TINYINT(2) NOT NULL DEFAULT 0",
        ],
        primary: Some("domain"),
        unique: &[],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "atrn_map",
        columns: &[
            "pw_name char(40) NOT NULL",
            "pw_domain char(67) NOT NULL",
            "domain_list char(67) NOT NULL",
        ],
        primary: None,
        unique: &["pw_name, pw_domain, domain_list"],
        indexes: &[],
        timestamp: true,
    },
    Table {
        name: "dbinfo",
        columns: &[
            "filename char(128) NOT NULL",
            "domain char(64) NOT NULL",
            "distributed int NOT NULL",
            "server char(28) NOT NULL",
            "mdahost char(28) NOT NULL",
            "port int NOT NULL",
            "use_ssl int NOT NULL",
            "dbname char(28) NOT NULL",
            "user char(28) NOT NULL",
            "passwd char(28) NOT NULL",
        ],
        primary: None,
        unique: &[
            "filename, domain, distributed, server, mdahost, port, use_ssl, dbname, user, passwd",
        ],
        indexes: &["domain"],
        timestamp: true,
    },
    Table {
        name: "dir_changes",
        columns: &["id int NOT NULL", "counter bigint NOT NULL"],
        primary: Some("id"),
        unique: &[],
        indexes: &[],
        timestamp: false,
    },
];

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL / MariaDB.
    Mysql,
    /// The embedded SQLite store.
    Sqlite,
}

fn sqlite_type(col: &str) -> String {
    col.replace(" ON UPDATE CURRENT_TIMESTAMP", "")
        .replace(" unsigned", "")
}

fn strip_prefix_len(cols: &str) -> String {
    cols.split(',')
        .map(|c| c.trim().split('(').next().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `CREATE TABLE IF NOT EXISTS` (and index) statements, in order.
pub(crate) fn create_statements(dialect: Dialect) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES {
        let mut parts: Vec<String> = t
            .columns
            .iter()
            .map(|c| match dialect {
                Dialect::Mysql => (*c).to_string(),
                Dialect::Sqlite => sqlite_type(c),
            })
            .collect();
        if t.timestamp {
            parts.push(match dialect {
                Dialect::Mysql => TS.to_string(),
                Dialect::Sqlite => sqlite_type(TS),
            });
        }
        if let Some(pk) = t.primary {
            parts.push(format!("PRIMARY KEY ({pk})"));
        }
        for (i, u) in t.unique.iter().enumerate() {
            parts.push(match dialect {
                Dialect::Mysql => format!("UNIQUE KEY {}_u{i} ({u})", t.name),
                Dialect::Sqlite => format!("UNIQUE ({u})"),
            });
        }
        if dialect == Dialect::Mysql {
            for (i, ix) in t.indexes.iter().enumerate() {
                parts.push(format!("KEY {}_i{i} ({ix})", t.name));
            }
        }
        let tail = match dialect {
            Dialect::Mysql => " ENGINE=InnoDB",
            Dialect::Sqlite => "",
        };
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {} ({}){tail}",
            t.name,
            parts.join(", ")
        ));
        if dialect == Dialect::Sqlite {
            for (i, ix) in t.indexes.iter().enumerate() {
                out.push(format!(
                    "CREATE INDEX IF NOT EXISTS {}_i{i} ON {} ({})",
                    t.name,
                    t.name,
                    strip_prefix_len(ix)
                ));
            }
        }
    }
    out.push(match dialect {
        Dialect::Mysql => "CREATE TABLE IF NOT EXISTS ischema (id int NOT NULL AUTO_INCREMENT, comment TEXT NOT NULL, timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (id)) ENGINE=InnoDB".to_string(),
        Dialect::Sqlite => "CREATE TABLE IF NOT EXISTS ischema (id INTEGER PRIMARY KEY AUTOINCREMENT, comment TEXT NOT NULL, timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)".to_string(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_statements_are_valid() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for s in create_statements(Dialect::Sqlite) {
            c.execute(&s, []).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        // Idempotent.
        for s in create_statements(Dialect::Sqlite) {
            c.execute(&s, []).unwrap();
        }
    }

    #[test]
    fn mysql_statements_keep_indimail_types() {
        let s = create_statements(Dialect::Mysql).join("\n");
        assert!(s.contains("CREATE TABLE IF NOT EXISTS indimail (pw_name char(40) NOT NULL"));
        assert!(s.contains("ON UPDATE CURRENT_TIMESTAMP"));
        assert!(s.contains("KEY indimail_i0 (pw_gecos(25))"));
    }
}
