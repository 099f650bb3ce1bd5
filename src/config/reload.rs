//! What a reload may not change: settings bound to sockets and keys already handed out keep
//! their old values until a restart.

use super::Config;

impl Config {
    /// Takes `old`'s values for the settings only a restart may change, and names each that
    /// the new file changed.
    pub fn keep_restart_keys(&mut self, old: &Config) -> Vec<&'static str> {
        let (o, n) = (&old.general, &mut self.general);
        let changed: Vec<&'static str> = [
            ("listen_addr", o.listen_addr != n.listen_addr),
            ("listen_port", o.listen_port != n.listen_port),
            ("http_listen", o.http_listen != n.http_listen),
            ("peer_id", o.peer_id != n.peer_id),
            ("so_reuseport", o.so_reuseport != n.so_reuseport),
            ("workers", o.workers != n.workers),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        n.listen_addr.clone_from(&o.listen_addr);
        n.listen_port = o.listen_port;
        n.http_listen.clone_from(&o.http_listen);
        n.peer_id = o.peer_id;
        n.so_reuseport = o.so_reuseport;
        n.workers = o.workers;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_keeps_the_listening_address_and_names_it() {
        let old = Config::parse("[databases.app]\n", "old").unwrap();
        let mut new = Config::parse(
            "listen_port = 7000\ndefault_pool_size = 3\n[databases.app]\n",
            "new",
        )
        .unwrap();
        assert_eq!(new.keep_restart_keys(&old), ["listen_port"]);
        assert_eq!(new.general.listen_port, old.general.listen_port);
        assert_eq!(new.general.default_pool_size, 3, "the rest takes effect");
    }
}
