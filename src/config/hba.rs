//! auth_type = "hba": how each client must prove who it is, by the way it connected, the
//! database, the user and its address, read from a file in pg_hba.conf's format (PgBouncer's
//! auth_hba_file). The first line that matches decides; none matching refuses the client.

use std::net::IpAddr;

/// What a matching line asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    Md5,
    ScramSha256,
    /// On the Unix socket: the system user the client runs as must be the user it asks for.
    Peer,
    /// On TLS (hostssl): the client's certificate must name the user it asks for.
    Cert,
}

/// How a client connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// On the Unix socket.
    Local,
    Host {
        ip: IpAddr,
        tls: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

/// A database or user field: `all`, or names (for databases also `sameuser`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    all: bool,
    same_user: bool,
    names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    kind: Kind,
    databases: Names,
    users: Names,
    /// The network and its prefix length; None for `all` and for local lines.
    network: Option<(IpAddr, u8)>,
    method: Method,
}

/// The lines of an HBA file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<Rule>,
}

impl Hba {
    /// Reads the text of an HBA file; an error gives its line number and what is wrong.
    pub fn parse(text: &str) -> Result<Hba, (usize, String)> {
        let mut rules = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = strip_comment(raw);
            let fields = fields(line).map_err(|e| (n + 1, e))?;
            if fields.is_empty() {
                continue;
            }
            rules.push(rule(&fields).map_err(|e| (n + 1, e))?);
        }
        Ok(Hba { rules })
    }

    /// Whether a line asks for a client certificate.
    pub fn asks_for_certificates(&self) -> bool {
        self.rules.iter().any(|r| r.method == Method::Cert)
    }

    /// The method of the first line that matches, None if none does.
    pub fn method(&self, conn: Conn, database: &str, user: &str) -> Option<Method> {
        self.rules
            .iter()
            .find(|r| r.matches(conn, database, user))
            .map(|r| r.method)
    }
}

impl Rule {
    fn matches(&self, conn: Conn, database: &str, user: &str) -> bool {
        let way = match (self.kind, conn) {
            (Kind::Local, Conn::Local) => true,
            (Kind::Host, Conn::Host { .. }) => true,
            (Kind::HostSsl, Conn::Host { tls, .. }) => tls,
            (Kind::HostNoSsl, Conn::Host { tls, .. }) => !tls,
            _ => false,
        };
        let database_ok = self.databases.all
            || (self.databases.same_user && database == user)
            || self.databases.names.iter().any(|n| n == database);
        let user_ok = self.users.all || self.users.names.iter().any(|n| n == user);
        let address_ok = match (self.network, conn) {
            (None, _) => true,
            (Some((net, bits)), Conn::Host { ip, .. }) => within(ip, net, bits),
            (Some(_), Conn::Local) => false,
        };
        way && database_ok && user_ok && address_ok
    }
}

/// Whether `ip` is in the network `net`/`bits` (of the same family).
fn within(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The line without its comment (a `#` outside double quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// One item of a field: its text, and whether it was quoted (a quoted `all` is a name).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    text: String,
    quoted: bool,
}

impl Item {
    fn keyword(&self, word: &str) -> bool {
        !self.quoted && self.text == word
    }
}

/// The whitespace-separated fields of a line, each a comma-separated list of items.
fn fields(line: &str) -> Result<Vec<Vec<Item>>, String> {
    let mut fields: Vec<Vec<Item>> = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(fields);
        }
        let mut field = Vec::new();
        loop {
            let mut item = Item {
                text: String::new(),
                quoted: false,
            };
            while let Some(&c) = chars.peek() {
                match c {
                    '"' => {
                        chars.next();
                        item.quoted = true;
                        loop {
                            match chars.next() {
                                Some('"') if chars.next_if_eq(&'"').is_some() => {
                                    item.text.push('"')
                                }
                                Some('"') => break,
                                Some(c) => item.text.push(c),
                                None => return Err("a quote is not closed".into()),
                            }
                        }
                    }
                    ',' | ' ' | '\t' => break,
                    c => {
                        chars.next();
                        item.text.push(c);
                    }
                }
            }
            field.push(item);
            if chars.next_if_eq(&',').is_none() {
                break;
            }
        }
        fields.push(field);
    }
}

/// One line's rule from its fields.
fn rule(fields: &[Vec<Item>]) -> Result<Rule, String> {
    let single = |i: usize, what: &str| -> Result<&Item, String> {
        match fields.get(i).map(Vec::as_slice) {
            Some([item]) => Ok(item),
            Some(_) => Err(format!("{what}: one value, not a list")),
            None => Err(format!("{what} is missing")),
        }
    };
    let kind = match single(0, "the connection type")?.text.as_str() {
        "local" => Kind::Local,
        "host" => Kind::Host,
        "hostssl" => Kind::HostSsl,
        "hostnossl" => Kind::HostNoSsl,
        other => {
            return Err(format!(
                "connection type \"{other}\": local, host, hostssl or hostnossl"
            ))
        }
    };
    let databases = names(fields.get(1), "database", true)?;
    let users = names(fields.get(2), "user", false)?;
    let mut at = 3;
    let network = match kind {
        Kind::Local => None,
        _ => {
            let address = single(3, "the address")?;
            at = 4;
            if address.keyword("all") {
                None
            } else if let Some((ip, bits)) = address.text.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| bad_address(&address.text))?;
                let bits: u8 = bits.parse().map_err(|_| bad_address(&address.text))?;
                (bits <= max_bits(ip))
                    .then_some(Some((ip, bits)))
                    .ok_or_else(|| bad_address(&address.text))?
            } else {
                // An address and its mask, in two fields.
                let ip: IpAddr = address
                    .text
                    .parse()
                    .map_err(|_| bad_address(&address.text))?;
                let mask = single(4, "the address's mask")?;
                let mask: IpAddr = mask.text.parse().map_err(|_| bad_address(&mask.text))?;
                at = 5;
                Some((
                    ip,
                    mask_bits(ip, mask).ok_or_else(|| bad_address(&address.text))?,
                ))
            }
        }
    };
    let method = match single(at, "the method")?.text.as_str() {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "md5" => Method::Md5,
        "scram-sha-256" => Method::ScramSha256,
        "peer" if kind == Kind::Local => Method::Peer,
        "peer" => return Err("peer works only on local lines (the Unix socket)".into()),
        "cert" if kind == Kind::HostSsl => Method::Cert,
        "cert" => return Err("cert works only on hostssl lines".into()),
        other => {
            return Err(format!(
            "method \"{other}\" is not supported: trust, reject, md5, scram-sha-256, peer or cert"
        ))
        }
    };
    if let Some(option) = fields.get(at + 1).and_then(|f| f.first()) {
        return Err(format!("option \"{}\" is not supported", option.text));
    }
    Ok(Rule {
        kind,
        databases,
        users,
        network,
        method,
    })
}

fn names(field: Option<&Vec<Item>>, what: &str, database: bool) -> Result<Names, String> {
    let field = field.ok_or_else(|| format!("the {what} is missing"))?;
    let mut out = Names {
        all: false,
        same_user: false,
        names: Vec::new(),
    };
    for item in field {
        if item.keyword("all") {
            out.all = true;
        } else if database && item.keyword("sameuser") {
            out.same_user = true;
        } else if database && item.keyword("replication") {
            // pgsluice takes no replication connections: the line matches none.
        } else if !item.quoted && (item.text.starts_with('@') || item.text.starts_with('+')) {
            return Err(format!(
                "{what} \"{}\": @file and +group are not supported",
                item.text
            ));
        } else if !item.quoted && matches!(item.text.as_str(), "samerole" | "samegroup") {
            return Err(format!("{what} \"{}\" is not supported", item.text));
        } else if item.text.is_empty() {
            return Err(format!("an empty {what} name"));
        } else {
            out.names.push(item.text.clone());
        }
    }
    Ok(out)
}

fn bad_address(text: &str) -> String {
    format!("address \"{text}\": all, an IP address with /bits, or an IP address and a mask")
}

fn max_bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The prefix length of a netmask of `ip`'s family (ones, then zeros).
fn mask_bits(ip: IpAddr, mask: IpAddr) -> Option<u8> {
    let (ones, zeros) = match (ip, mask) {
        (IpAddr::V4(_), IpAddr::V4(m)) => {
            let m = u32::from(m);
            (m.leading_ones(), m.trailing_zeros())
        }
        (IpAddr::V6(_), IpAddr::V6(m)) => {
            let m = u128::from(m);
            (m.leading_ones(), m.trailing_zeros())
        }
        _ => return None,
    };
    (ones + zeros == u32::from(max_bits(ip))).then_some(ones as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     peer
host    \"all\",app       app,\"Odd User\"  10.1.0.0/16             scram-sha-256
hostssl all             certified       0.0.0.0/0               cert
hostssl sameuser        all             0.0.0.0/0               md5 # a comment
host    pgsluice        admin           192.168.1.0 255.255.255.0 trust
hostnossl all           all             ::1/128                 reject
host    all             all             all                     md5
";

    fn host(ip: &str, tls: bool) -> Conn {
        Conn::Host {
            ip: ip.parse().unwrap(),
            tls,
        }
    }

    #[test]
    fn the_first_matching_line_decides() {
        let hba = Hba::parse(FILE).unwrap();
        assert_eq!(hba.method(Conn::Local, "app", "x"), Some(Method::Peer));
        let inside = host("10.1.2.3", false);
        assert_eq!(hba.method(inside, "app", "app"), Some(Method::ScramSha256));
        assert_eq!(
            hba.method(inside, "app", "Odd User"),
            Some(Method::ScramSha256)
        );
        // A quoted "all" is a database named all.
        assert_eq!(hba.method(inside, "all", "app"), Some(Method::ScramSha256));
        assert_eq!(hba.method(inside, "other", "app"), Some(Method::Md5));
        assert_eq!(
            hba.method(host("10.2.0.1", true), "bob", "bob"),
            Some(Method::Md5)
        );
        let office = host("192.168.1.77", false);
        assert_eq!(hba.method(office, "pgsluice", "admin"), Some(Method::Trust));
        assert_eq!(
            hba.method(host("::1", false), "app", "app"),
            Some(Method::Reject)
        );
        assert_eq!(
            hba.method(host("::1", true), "app", "app"),
            Some(Method::Md5)
        );
        let only_local = Hba::parse("local all all trust\n").unwrap();
        assert_eq!(only_local.method(inside, "app", "app"), None);
    }

    #[test]
    fn what_is_not_supported_is_an_error_with_its_line() {
        for (text, why) in [
            ("host all all 10.0.0.0/8 ident", "method \"ident\""),
            ("host all all 10.0.0.0/8 peer", "peer works only"),
            ("host all all 10.0.0.0/8 cert", "cert works only"),
            ("local @dbs all trust", "@file"),
            ("local all +admins trust", "+group"),
            ("host all all 10.0.0.0/33 trust", "address"),
            ("host all all 10.0.0.1 255.0.255.0 trust", "address"),
            ("host all all samenet trust", "address"),
            ("local all all peer map=x", "option"),
            ("local \"all all trust", "quote"),
            ("localhost all all trust", "connection type"),
            ("host all all", "address is missing"),
        ] {
            let (line, e) = Hba::parse(&format!("# first\n{text}\n")).unwrap_err();
            assert_eq!(line, 2, "{text}");
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn networks_match_by_prefix() {
        let v4: IpAddr = "10.1.0.0".parse().unwrap();
        assert!(within("10.1.255.1".parse().unwrap(), v4, 16));
        assert!(!within("10.2.0.1".parse().unwrap(), v4, 16));
        assert!(within("9.9.9.9".parse().unwrap(), v4, 0));
        let v6: IpAddr = "fd00::".parse().unwrap();
        assert!(within("fd00::1".parse().unwrap(), v6, 8));
        assert!(
            !within("10.1.0.1".parse().unwrap(), v6, 0),
            "families differ"
        );
        assert_eq!(mask_bits(v4, "255.255.240.0".parse().unwrap()), Some(20));
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_a_panic(text in "\\PC{0,120}") {
            if let Ok(hba) = Hba::parse(&text) {
                let _ = hba.method(host("10.0.0.1", false), "app", "app");
                let _ = hba.method(Conn::Local, "app", "app");
            }
        }

        #[test]
        fn lines_of_hba_words_are_read_or_refused_without_a_panic(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "local", "host", "hostssl", "all", "sameuser", "app", "\"a b\"", "10.0.0.0/8",
                "10.0.0.1", "255.255.0.0", "::1/128", "0.0.0.0/0", "/", "/99", "trust",
                "reject", "md5", "peer", "scram-sha-256", ",", " ", "\n", "#",
            ]), 0..16),
        ) {
            if let Ok(hba) = Hba::parse(&words.concat()) {
                let _ = hba.method(host("10.0.0.1", true), "app", "app");
                let _ = hba.method(host("::1", false), "a b", "app");
            }
        }
    }
}
