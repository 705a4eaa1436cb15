//! `mqd cluster status|add|remove`: membership changes online (protocol-spec/cluster.md 7). It
//! sends one memcache text line (`cluster status`, …) to any member's client port (or, with
//! `--peer`, opens an admin connection on its replication address); that member passes a
//! change on to the leader. `add` and `remove` wait until the change is
//! applied and print the new membership; a request nothing was done for (no leader yet, the
//! leadership moving) is asked again until `--wait` runs out. Exit 0 on success, 1 otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use argh::FromArgs;

use crate::replication::admin::codec::{
    self, AdminError, AdminReply, AdminRequest, ClusterView, MOST_WAIT,
};
use crate::replication::admin::ADMIN_MARKER;
use crate::replication::tcp::connect_to;

#[derive(FromArgs)]
#[argh(subcommand, name = "cluster")]
/// show or change a replicated group's membership, online, through any member
pub struct Cluster {
    #[argh(subcommand)]
    action: Action,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Action {
    Status(Status),
    Add(Add),
    Remove(Remove),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
/// print every member: id, address, role, how far it has the log (as the leader sees it)
struct Status {
    /// a member's client address (default 127.0.0.1:22201)
    #[argh(option, default = "String::from(\"127.0.0.1:22201\")")]
    addr: String,
    /// the address is the member's replication address (its --cluster entry), not a client port
    #[argh(switch)]
    peer: bool,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "add")]
/// add node ID (started with --node ID --cluster ... --join on an empty directory) as a
/// learner; the leader makes it a voter once it has caught up
struct Add {
    #[argh(positional)]
    id: u64,
    /// its replication address, HOST:PORT
    #[argh(positional)]
    node_addr: String,
    /// a member's client address (default 127.0.0.1:22201)
    #[argh(option, default = "String::from(\"127.0.0.1:22201\")")]
    addr: String,
    /// the address is the member's replication address (its --cluster entry), not a client port
    #[argh(switch)]
    peer: bool,
    /// seconds to wait for the change (default 60)
    #[argh(option, default = "60")]
    wait: u64,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "remove")]
/// remove node ID from the group (a leader hands its leadership on first)
struct Remove {
    #[argh(positional)]
    id: u64,
    /// a member's client address (default 127.0.0.1:22201)
    #[argh(option, default = "String::from(\"127.0.0.1:22201\")")]
    addr: String,
    /// the address is the member's replication address (its --cluster entry), not a client port
    #[argh(switch)]
    peer: bool,
    /// seconds to wait for the change (default 60)
    #[argh(option, default = "60")]
    wait: u64,
}

impl Cluster {
    pub fn run(&self) -> ExitCode {
        let wait = |secs: u64| Duration::from_secs(secs.clamp(1, MOST_WAIT.as_secs()));
        let (addr, peer, request) = match &self.action {
            Action::Status(s) => (&s.addr, s.peer, AdminRequest::Status),
            Action::Add(a) => (
                &a.addr,
                a.peer,
                AdminRequest::Add {
                    id: a.id,
                    addr: a.node_addr.clone(),
                    wait: wait(a.wait),
                },
            ),
            Action::Remove(r) => (
                &r.addr,
                r.peer,
                AdminRequest::Remove {
                    id: r.id,
                    wait: wait(r.wait),
                },
            ),
        };
        match ask_until_answered(addr, peer, &request) {
            Ok(Ok(view)) => {
                match &request {
                    AdminRequest::Status => {}
                    AdminRequest::Add { id, .. } => println!("node {id} added: a voter now"),
                    AdminRequest::Remove { id, .. } => println!("node {id} removed"),
                }
                print!("{}", render(&view));
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                eprintln!("mqd cluster: {}", codec::error_line(&e));
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("mqd cluster: {addr}: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Asks, and asks again while the answer says nothing was done and to try later (`no leader`,
/// `retry`) or the member cannot be reached, until the request's wait is over.
fn ask_until_answered(
    addr: &str,
    peer: bool,
    request: &AdminRequest,
) -> Result<AdminReply, String> {
    let give_up = Instant::now()
        + match request {
            AdminRequest::Status => Duration::from_secs(5),
            AdminRequest::Add { wait, .. } | AdminRequest::Remove { wait, .. } => *wait,
        };
    loop {
        let answer = ask(addr, peer, request);
        let again = matches!(
            answer,
            Err(_) | Ok(Err(AdminError::NoLeader)) | Ok(Err(AdminError::Retry(_)))
        );
        if !again || Instant::now() >= give_up {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One request on a connection of its own: to a client port, or (`peer`) an admin connection
/// on a replication address.
pub fn ask(addr: &str, peer: bool, request: &AdminRequest) -> Result<AdminReply, String> {
    let mut stream = connect_to(addr, Duration::from_secs(2))?;
    let _ = stream.set_read_timeout(Some(request.patience() + Duration::from_secs(10)));
    let mut out = if peer {
        ADMIN_MARKER.to_vec()
    } else {
        Vec::new()
    };
    out.extend_from_slice(codec::request_line(request).as_bytes());
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = (&mut reader)
            .take(64 << 10)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("the member closed the connection before answering".into());
        }
        let line = line.trim_end().to_string();
        let end = codec::ends_reply(&line);
        lines.push(line);
        if end {
            return codec::parse_reply(&lines);
        }
        if lines.len() > 1000 {
            return Err("an answer too long".into());
        }
    }
}

/// The membership as a table.
fn render(view: &ClusterView) -> String {
    let dash = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
    let mut out = format!(
        "{:<6} {:<24} {:<8} {:>10} {:>8}\n",
        "NODE", "ADDRESS", "ROLE", "MATCHED", "LAG"
    );
    for m in &view.members {
        out.push_str(&format!(
            "{:<6} {:<24} {:<8} {:>10} {:>8}{}\n",
            m.id,
            m.addr.as_deref().unwrap_or("-"),
            if m.voter { "voter" } else { "learner" },
            dash(m.matched),
            dash(m.lag),
            if m.id == view.leader {
                "  (leader)"
            } else {
                ""
            }
        ));
    }
    let leader = if view.leader == 0 {
        "none".to_string()
    } else {
        view.leader.to_string()
    };
    out.push_str(&format!(
        "leader {leader}, term {}, commit {} (as node {} sees it)\n",
        view.term, view.commit, view.node
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::admin::codec::MemberInfo;

    #[test]
    fn the_table_shows_each_member_and_who_leads() {
        let view = ClusterView {
            node: 2,
            leader: 1,
            term: 3,
            commit: 9,
            members: vec![
                MemberInfo {
                    id: 1,
                    addr: Some("a:1".into()),
                    voter: true,
                    matched: Some(9),
                    lag: Some(0),
                },
                MemberInfo {
                    id: 4,
                    addr: Some("d:4".into()),
                    voter: false,
                    matched: None,
                    lag: None,
                },
            ],
        };
        let table = render(&view);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].starts_with("1 ") && lines[1].ends_with("(leader)"));
        assert!(lines[2].contains("learner") && lines[2].contains(" - "));
        assert!(lines[3].starts_with("leader 1, term 3, commit 9"));
    }
}
