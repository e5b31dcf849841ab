//! One OOM, several victims: `memory.oom.group` kills every task of a cgroup in one go. The
//! victims of one incident get one `incident.id` and the count `incident.victims`.
//!
//! With the `oom_kill_process` hook the kernel says when the invocation is over (an
//! invocation-end record with its victim count), so victims are held for microseconds. Without
//! it, only kills where the victim's memcg ancestry has `memory.oom.group` set can be group
//! kills; those are held until no further victim of the same trigger and OOM cgroup has arrived
//! for [`GROUP_QUIET`]. Every other kill is its own incident and is never held.
use crate::model::{Incident, OomKill};
use std::time::{Duration, Instant};

/// How long a group kill may still be adding victims (without an invocation-end record).
pub const GROUP_QUIET: Duration = Duration::from_millis(20);
/// Upper bound on waiting for an invocation-end record.
pub const INVOCATION_TIMEOUT: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Invocation(u64),
    Group { trigger: Option<u32>, cgroup: Option<String> },
}

#[derive(Default)]
pub struct Incidents {
    key: Option<Key>,
    pending: Vec<OomKill>,
    deadline: Option<Instant>,
}

fn key_of(ev: &OomKill) -> Option<Key> {
    if let Some(seq) = ev.oom.invocation {
        return Some(Key::Invocation(seq));
    }
    (ev.oom.group_kill == Some(true))
        .then(|| Key::Group { trigger: ev.trigger.pid, cgroup: ev.oom.cgroup.clone() })
}

impl Incidents {
    /// When held victims must be released even if nothing else happens.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Takes a victim; returns the victims ready to go out (possibly none, or several).
    pub fn push(&mut self, ev: OomKill, now: Instant) -> Vec<OomKill> {
        let key = key_of(&ev);
        let mut out = Vec::new();
        if key.is_some() && key == self.key {
            self.pending.push(ev);
            if let Some(Key::Group { .. }) = &self.key {
                self.deadline = Some(now + GROUP_QUIET);
            }
            return out;
        }
        out.extend(self.flush());
        match key {
            None => out.extend(finish(vec![ev])),
            Some(k) => {
                self.deadline = Some(
                    now + match k {
                        Key::Invocation(_) => INVOCATION_TIMEOUT,
                        Key::Group { .. } => GROUP_QUIET,
                    },
                );
                self.key = Some(k);
                self.pending.push(ev);
            }
        }
        out
    }

    /// The kernel finished OOM invocation `seq`.
    pub fn invocation_end(&mut self, seq: u64) -> Vec<OomKill> {
        if self.key == Some(Key::Invocation(seq)) {
            return self.flush();
        }
        Vec::new()
    }

    /// Releases held victims whose deadline passed.
    pub fn due(&mut self, now: Instant) -> Vec<OomKill> {
        match self.deadline {
            Some(d) if d <= now => self.flush(),
            _ => Vec::new(),
        }
    }

    pub fn flush(&mut self) -> Vec<OomKill> {
        self.key = None;
        self.deadline = None;
        finish(std::mem::take(&mut self.pending))
    }
}

/// Numbers the victims of one incident; its id is the first victim's node, time and pid.
fn finish(mut victims: Vec<OomKill>) -> Vec<OomKill> {
    let Some(first) = victims.first() else { return victims };
    let id = format!("{}/{}/{}", first.node, first.time, first.victim.pid.unwrap_or(0));
    let n = victims.len() as u32;
    for (i, v) in victims.iter_mut().enumerate() {
        v.incident = Some(Incident { id: id.clone(), victims: n, index: i as u32 + 1 });
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn victim(pid: u32, invocation: Option<u64>, group: Option<bool>) -> OomKill {
        let mut ev = crate::model::test_kill(serde_json::json!({
            "time": format!("t{pid}"), "node": "n",
            "victim": {"pid": pid}, "trigger": {"pid": 7}, "oom": {"cgroup": "/g"}
        }));
        ev.oom.invocation = invocation;
        ev.oom.group_kill = group;
        ev
    }

    #[test]
    fn single_kills_are_not_held() {
        let mut inc = Incidents::default();
        let out = inc.push(victim(1, None, Some(false)), Instant::now());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].incident, Some(Incident { id: "n/t1/1".into(), victims: 1, index: 1 }));
        assert!(inc.deadline().is_none());
    }

    #[test]
    fn invocation_victims_wait_for_the_end_record() {
        let mut inc = Incidents::default();
        let now = Instant::now();
        for pid in 1..=3 {
            assert!(inc.push(victim(pid, Some(9), Some(true)), now).is_empty());
        }
        assert!(inc.invocation_end(8).is_empty());
        let out = inc.invocation_end(9);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|v| v.incident.as_ref().unwrap().victims == 3));
        assert_eq!(out[2].incident.as_ref().unwrap().index, 3);
        assert_eq!(out[0].incident.as_ref().unwrap().id, out[2].incident.as_ref().unwrap().id);
    }

    #[test]
    fn group_kills_without_context_close_after_a_quiet_period() {
        let mut inc = Incidents::default();
        let t0 = Instant::now();
        assert!(inc.push(victim(1, None, Some(true)), t0).is_empty());
        assert!(inc.push(victim(2, None, Some(true)), t0 + Duration::from_millis(5)).is_empty());
        assert!(inc.due(t0 + Duration::from_millis(10)).is_empty());
        let out = inc.due(t0 + Duration::from_millis(30));
        assert_eq!(out.len(), 2);
        // A different incident flushes the held one first.
        assert!(inc.push(victim(3, Some(1), None), t0).is_empty());
        let out = inc.push(victim(4, None, None), t0);
        assert_eq!(out.iter().map(|v| v.victim.pid.unwrap()).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(out[0].incident.as_ref().unwrap().victims, 1);
    }
}
