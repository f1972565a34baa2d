//! Where a client connects: the socket URL of a server, or of each gateway of a deployment on
//! several machines, and the list a client moves along when one fails.
//!
//! A gateway names the URL browsers reach it at (`--public-url`); every server on the bus (the
//! gateways and the coordinator) hears it and lists the live ones at `GET /api/servers`. A client page starts with its
//! own origin and moves to the next listed gateway whenever a connection ends or cannot be
//! made, keeping its key, shard and ledger (the simulator does the same with `--server` given
//! several times). Everything here is checked where it is read: a URL comes from an operator's
//! flag, a peer on the bus or a server's answer.

use serde::{Deserialize, Serialize};

/// Longest socket URL accepted (an operator's host name and path fit many times over).
pub const MAX_URL_LEN: usize = 512;
/// Most servers a client page takes from a server's answer ([`servers_to_try`]): enough to
/// outlive several failed gateways, and a bound on what the answer can make a page hold.
pub const MAX_SERVERS: usize = 32;

/// A checked socket URL (`ws://host[:port]/path` or `wss://…`) and the HTTP origin its shard
/// files are downloaded from. Both receive the client's key (its `Hello`, the shard query),
/// which is why every URL a client may move to is checked and comes only from the page's own
/// server or the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    socket: String,
    origin: String,
}

impl ServerUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let shown = crate::clip(url, 80);
        let bad = || format!("server URL {shown:?}: expected ws://host:port/path or wss://…");
        if url.len() > MAX_URL_LEN {
            return Err(format!(
                "server URL {shown:?} is {} bytes long: expected at most {MAX_URL_LEN}",
                url.len()
            ));
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("ws://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            ("https", rest)
        } else {
            return Err(bad());
        };
        let authority = rest
            .split(['/', '?', '#'])
            .next()
            .filter(|a| !a.is_empty())
            .ok_or_else(bad)?;
        if authority.contains('@') {
            return Err(format!(
                "server URL {shown:?}: expected ws://host:port/path without a user name (no '@')"
            ));
        }
        Ok(Self {
            socket: url.to_owned(),
            origin: format!("{scheme}://{authority}"),
        })
    }

    /// The URL the socket opens.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// `ws://host:port/ws` → `http://host:port`, `wss` → `https`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl std::fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.socket)
    }
}

/// A URL as an error message may show it: without its query. A shard's URL carries the
/// client's key there (the server's assignment puts it in), and error messages reach the page
/// and the logs.
pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or_default()
}

/// The servers a client tries, in turn: each attempt takes the next one, so a client whose
/// gateway died reaches another at its next attempt, and one refused everywhere keeps cycling
/// (with its backoff) until one answers.
#[derive(Debug, Clone)]
pub struct ServerList {
    servers: Vec<ServerUrl>,
    next: usize,
}

impl ServerList {
    /// The first URL is tried first. Repeated URLs count once; at least one is needed, each a
    /// valid socket URL. (Lists from the network are bounded where they are read:
    /// [`servers_to_try`]; an operator's `--server` list is the operator's.)
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Result<Self, String> {
        let mut servers: Vec<ServerUrl> = Vec::new();
        for url in urls {
            let url = ServerUrl::parse(url.as_ref())?;
            if !servers.contains(&url) {
                servers.push(url);
            }
        }
        if servers.is_empty() {
            return Err("no server URL: expected at least one".into());
        }
        Ok(Self { servers, next: 0 })
    }

    /// The server of the next attempt.
    pub fn next_server(&mut self) -> &ServerUrl {
        let at = self.next % self.servers.len();
        self.next = (at + 1) % self.servers.len();
        &self.servers[at]
    }

    /// How many distinct servers the list holds (never 0).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.servers.len()
    }
}

/// `GET /api/servers`: the live gateways of the deployment (empty on a single server), in an
/// order of the answering server's choosing (shuffled, so that the clients of a failed
/// gateway do not all move to the same one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServersInfo {
    pub servers: Vec<String>,
}

/// The list a client page tries: its own origin first (where the page came from, so a single
/// server or a load balancer keeps working as before), then the listed gateways, at most
/// [`MAX_SERVERS`] in all. URLs that do not parse are skipped rather than failing the join (the
/// page's own origin is always there), and so are plain `ws://` ones under a `wss://` page: the
/// browser would refuse them, and the key must not leave TLS.
pub fn servers_to_try(own: &str, listed: &[String]) -> Vec<String> {
    let secure = own.starts_with("wss://");
    let mut out = vec![own.to_owned()];
    for url in listed {
        if out.len() == MAX_SERVERS {
            break;
        }
        let downgrade = secure && !url.starts_with("wss://");
        if !downgrade && !out.contains(url) && ServerUrl::parse(url).is_ok() {
            out.push(url.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_from_socket_url() {
        let u = ServerUrl::parse("ws://127.0.0.1:3000/ws").unwrap();
        assert_eq!(
            (u.socket(), u.origin()),
            ("ws://127.0.0.1:3000/ws", "http://127.0.0.1:3000")
        );
        let u = ServerUrl::parse("wss://fl.example/ws").unwrap();
        assert_eq!(u.origin(), "https://fl.example");
        assert_eq!(
            ServerUrl::parse("wss://fl.example?x=1").unwrap().origin(),
            "https://fl.example"
        );
    }

    #[test]
    fn bad_urls_are_refused_with_what_was_expected() {
        for bad in [
            "http://x/ws",
            "ws:///ws",
            "ws://",
            "ws://a b/ws",
            "ws://u@evil/ws",
            "",
        ] {
            let e = ServerUrl::parse(bad).unwrap_err();
            assert!(e.contains("expected ws://"), "{bad:?}: {e}");
        }
        let long = format!("ws://h/{}", "a".repeat(MAX_URL_LEN));
        let e = ServerUrl::parse(&long).unwrap_err();
        assert!(e.contains("at most 512") && e.len() < 300, "{e}");
    }

    #[test]
    fn the_list_cycles_from_the_first_and_counts_each_url_once() {
        let mut list = ServerList::new(&["ws://a/ws", "ws://b/ws", "ws://a/ws"]).unwrap();
        assert_eq!(list.len(), 2);
        let tried: Vec<String> = (0..5).map(|_| list.next_server().to_string()).collect();
        assert_eq!(
            tried,
            [
                "ws://a/ws",
                "ws://b/ws",
                "ws://a/ws",
                "ws://b/ws",
                "ws://a/ws"
            ]
        );
    }

    #[test]
    fn a_list_is_never_empty_and_every_url_is_checked() {
        let none: [&str; 0] = [];
        assert!(ServerList::new(&none).unwrap_err().contains("at least one"));
        assert!(ServerList::new(&["ws://a/ws", "nope"]).is_err());
        // An operator's list of 100 gateways is the operator's to give (the simulator).
        let many: Vec<String> = (0..100).map(|i| format!("ws://h{i}/ws")).collect();
        assert_eq!(ServerList::new(&many).unwrap().len(), 100);
    }

    /// A server's answer is a peer's input: bad URLs are skipped, the page's own origin stays
    /// first, and a huge answer cannot grow the list past its bound.
    #[test]
    fn a_page_tries_its_own_origin_first_then_the_listed_gateways() {
        let listed = vec![
            "ws://b/ws".to_string(),
            "ws://a/ws".to_string(),
            "javascript:alert(1)".to_string(),
            "ws://c/ws".to_string(),
        ];
        assert_eq!(
            servers_to_try("ws://a/ws", &listed),
            ["ws://a/ws", "ws://b/ws", "ws://c/ws"]
        );
        let flood: Vec<String> = (0..10_000).map(|i| format!("ws://h{i}/ws")).collect();
        let list = servers_to_try("ws://a/ws", &flood);
        assert_eq!(list.len(), MAX_SERVERS);
        assert!(ServerList::new(&list).is_ok());
    }

    #[test]
    fn a_shown_url_leaves_the_key_out() {
        let url = "http://gw:3000/api/runs/1/shards/0/images?client_key=secret";
        assert_eq!(
            without_query(url),
            "http://gw:3000/api/runs/1/shards/0/images"
        );
    }

    /// A page served over TLS never moves its key to a plain socket.
    #[test]
    fn a_secure_page_moves_only_to_secure_gateways() {
        let listed = vec!["ws://b/ws".to_string(), "wss://c/ws".to_string()];
        assert_eq!(
            servers_to_try("wss://a/ws", &listed),
            ["wss://a/ws", "wss://c/ws"]
        );
    }
}
