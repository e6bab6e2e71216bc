//! UI sessions: a login with a token makes a random session id, kept in memory and sent to the
//! browser as an HttpOnly cookie, so the token itself is never stored by the browser. Sessions
//! expire after [`SESSION_TTL`] and end at logout or restart; at most [`MAX_SESSIONS`] are
//! kept (the oldest goes first).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::Principal;

pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl Sessions {
    /// Starts a session for `principal` and returns its id.
    pub fn start(&self, principal: Principal) -> String {
        let id = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let now = Instant::now();
        let mut map = self.by_id.lock();
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, (_, expires))| *expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (principal, now + SESSION_TTL));
        id
    }

    pub fn get(&self, id: &str) -> Option<Principal> {
        let map = self.by_id.lock();
        let (p, expires) = map.get(id)?;
        (*expires > Instant::now()).then(|| p.clone())
    }

    pub fn end(&self, id: &str) {
        self.by_id.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn sessions_start_answer_and_end() {
        let s = Sessions::default();
        let p = Principal {
            name: "ops".into(),
            role: Role::Admin,
            ingest_limits: Vec::new(),
            tenant: None,
            max_request_bytes: None,
        };
        let id = s.start(p.clone());
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id), Some(p));
        assert_eq!(s.get("other"), None);
        s.end(&id);
        assert_eq!(s.get(&id), None);
        assert!(s.is_empty());
    }
}
