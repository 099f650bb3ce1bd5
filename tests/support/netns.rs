//! A network namespace this test makes, joined to this one by a veth pair: a host of its
//! own on one machine. Needs root (CI runs as root); removed when dropped, also when the
//! test fails.

use std::process::Command;

pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    /// This side's address on the pair, and the namespace's.
    pub host_ip: String,
    pub ns_ip: String,
    /// The /29 both are in: `{net}.1` is this side, `{net}.2` to `{net}.6` may be the
    /// namespace's.
    pub net: String,
}

/// Runs a command, failing the test if it fails; its standard output.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// `tag` keeps the names and addresses of two tests running at once apart.
    pub fn create(tag: u8) -> Netns {
        let uid = run(&["id", "-u"]);
        assert_eq!(
            uid.trim(),
            "0",
            "this test makes a network namespace and needs root (CI runs as root)"
        );
        let id = std::process::id();
        let net = format!("10.{}.{}", 200 + tag as u32, id % 250);
        let ns = Netns {
            name: format!("pgsluice-{tag}-{id}"),
            host_if: format!("ps{tag}h{id}"),
            ns_if: format!("ps{tag}n{id}"),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
            net,
        };
        run(&["ip", "netns", "add", &ns.name]);
        run(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        run(&["ip", "link", "set", &ns.ns_if, "netns", &ns.name]);
        let host = format!("{}/29", ns.host_ip);
        run(&["ip", "addr", "add", &host, "dev", &ns.host_if]);
        run(&["ip", "link", "set", &ns.host_if, "up"]);
        ns.add_address(&ns.ns_ip);
        ns.inside(&["ip", "link", "set", &ns.ns_if, "up"]);
        ns.inside(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// One more address of the namespace's, on its end of the pair.
    pub fn add_address(&self, ip: &str) {
        self.inside(&["ip", "addr", "add", &format!("{ip}/29"), "dev", &self.ns_if]);
    }

    /// Runs a command inside the namespace; its standard output.
    pub fn inside(&self, cmd: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        run(&full)
    }

    /// A command that runs inside the namespace, with the namespace's own /etc/hosts when
    /// `hosts` gives one (`ip netns exec` mounts /etc/netns/NAME/hosts over it).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Lines of /etc/hosts for commands run inside, e.g. "10.201.3.2 peers.test".
    pub fn hosts(&self, lines: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/hosts"), lines).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
