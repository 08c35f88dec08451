//! Minion ids held compactly: a job to 30,000 minions keeps 30,000 ids for
//! as long as it runs, and every waiting call keeps its own.
//!
//! [`Names`] is a list of ids (what a publish reply lists), [`Expected`]
//! the ids a `local` job waits for and what is known of each. Both keep
//! the ids in one string, one after another: a name's bytes and 4 bytes
//! an id in a list, ~9 to 15 bytes in the set (its end and status in one
//! `u32`, and its table of `u32` indices, 7/8 full at most),
//! where a `String` each costs ~56 in a list and ~80 in a map (the
//! `String`, its allocation, the entry and the map's index).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A list of minion ids, in one string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    text: String,
    /// Where each id ends in `text`.
    ends: Vec<u32>,
}

impl Names {
    /// Room for `ids` ids of `bytes` bytes in all, allocated once.
    pub fn with_capacity(ids: usize, bytes: usize) -> Self {
        Names {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(ids),
        }
    }

    /// Append `id`; `false` (and nothing added) past 4 GiB of names,
    /// which bounded replies cannot reach.
    pub fn push(&mut self, id: &str) -> bool {
        let Ok(end) = u32::try_from(self.text.len() + id.len()) else {
            return false;
        };
        self.text.push_str(id);
        self.ends.push(end);
        true
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of all the ids.
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        (0..self.ends.len()).map(|i| {
            let start = i.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
            &self.text[start..self.ends[i] as usize]
        })
    }
}

impl<'a> FromIterator<&'a str> for Names {
    fn from_iter<I: IntoIterator<Item = &'a str>>(ids: I) -> Self {
        let mut names = Names::default();
        for id in ids {
            names.push(id);
        }
        names
    }
}

impl serde::Serialize for Names {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Which minions a job is waiting for, in the order they became known.
/// Every question the gathering loop asks per event is a hash lookup or a
/// counter, so a return costs the same with 10 or 30,000 minions.
#[derive(Debug, Default)]
pub(super) struct Expected {
    /// Every id, one after another, in the order they became known.
    names: String,
    /// For each id in that order: where its name ends in `names`, and what
    /// is known of it.
    ids: Vec<Known>,
    /// Indices into `ids`, found by name, hashed with [`hasher`].
    index: HashTable<u32>,
    /// Known, not returned and not missing.
    pending: usize,
}

/// SipHash with keys drawn once per process: the names come from the
/// master and from events any minion can fire. One for every set, not a
/// `RandomState` in each: every waiting call holds a set.
fn hasher() -> &'static RandomState {
    static HASHER: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

/// Where an id's name ends in `names` (the low 30 bits) and what is known
/// of it (the top two): 4 bytes an id, not 8 with a `Status` beside it.
#[derive(Debug, Clone, Copy)]
struct Known(u32);

const RETURNED: u32 = 1 << 31;
const MISSING: u32 = 1 << 30;
/// The names of one job's ids fit in 1 GiB: bounded replies and events
/// cannot reach it.
const END: u32 = MISSING - 1;

impl Known {
    fn new(end: u32, status: Status) -> Self {
        let mut known = Known(end);
        known.set(status);
        known
    }

    fn end(self) -> usize {
        (self.0 & END) as usize
    }

    fn status(self) -> Status {
        Status {
            returned: self.0 & RETURNED != 0,
            missing: self.0 & MISSING != 0,
        }
    }

    fn set(&mut self, status: Status) {
        self.0 &= END;
        if status.returned {
            self.0 |= RETURNED;
        }
        if status.missing {
            self.0 |= MISSING;
        }
    }
}

/// What is known of one expected minion.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status {
    pub returned: bool,
    /// Targeted, but the master has no accepted key by that name.
    pub missing: bool,
}

impl Expected {
    /// Room for `ids` ids of `bytes` bytes in all, allocated once.
    pub fn with_capacity(ids: usize, bytes: usize) -> Self {
        let mut expected = Expected::default();
        expected.names.reserve_exact(bytes);
        expected.ids.reserve_exact(ids);
        expected.index = HashTable::with_capacity(ids);
        expected
    }

    /// `id` is targeted (a no-op if it is already known).
    pub fn expect(&mut self, id: &str) {
        if let Some((_, true)) = self.get_or_insert(id, Status::default()) {
            self.pending += 1;
        }
    }

    /// `id` is targeted but has no accepted key.
    pub fn mark_missing(&mut self, id: &str) {
        let Some((i, added)) = self.get_or_insert(id, Status::default()) else {
            return;
        };
        if added {
            self.pending += 1;
        }
        let mut status = self.ids[i].status();
        if !status.missing {
            status.missing = true;
            self.ids[i].set(status);
            if !status.returned {
                self.pending -= 1;
            }
        }
    }

    /// Record a return; `false` if `id` had already returned.
    pub fn mark_returned(&mut self, id: &str) -> bool {
        // Not targeted as far as we know: kept, so that a second return of
        // it is not counted again.
        let returned = Status {
            returned: true,
            missing: false,
        };
        match self.get_or_insert(id, returned) {
            None => false,
            Some((_, true)) => true,
            Some((i, false)) => {
                let mut status = self.ids[i].status();
                if status.returned {
                    return false;
                }
                status.returned = true;
                self.ids[i].set(status);
                if !status.missing {
                    self.pending -= 1;
                }
                true
            }
        }
    }

    pub fn returned(&self, id: &str) -> bool {
        self.find(id).is_some_and(|i| self.ids[i].status().returned)
    }

    /// Known, not returned and not missing.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Every known minion has returned or is missing.
    pub fn done(&self) -> bool {
        self.pending == 0 && !self.ids.is_empty()
    }

    /// Every known id with its status, in the order they became known.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, Status)> {
        (0..self.ids.len()).map(|i| (name(&self.names, &self.ids, i), self.ids[i].status()))
    }

    /// The ids still pending, for a `saltutil.find_job` probe.
    pub fn pending_list(&self) -> Vec<String> {
        self.iter()
            .filter(|(_, s)| !s.returned && !s.missing)
            .map(|(id, _)| id.to_owned())
            .collect()
    }

    /// The heap bytes held (what the size test checks).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.names.capacity()
            + self.ids.capacity() * std::mem::size_of::<Known>()
            + self.index.allocation_size()
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.find_hashed(hasher().hash_one(id), id)
    }

    fn find_hashed(&self, hash: u64, id: &str) -> Option<usize> {
        let (names, ids) = (&self.names, &self.ids);
        self.index
            .find(hash, |&i| name(names, ids, i as usize) == id)
            .map(|&i| i as usize)
    }

    /// `id`'s index, added with `status` if it was not known (`true`
    /// then); one hash of it either way. `None` (and nothing added) past
    /// 1 GiB of names or 4 billion ids, which bounded replies and events
    /// cannot reach.
    fn get_or_insert(&mut self, id: &str, status: Status) -> Option<(usize, bool)> {
        let hash = hasher().hash_one(id);
        if let Some(i) = self.find_hashed(hash, id) {
            return Some((i, false));
        }
        let end = u32::try_from(self.names.len() + id.len())
            .ok()
            .filter(|&end| end <= END)?;
        let i = u32::try_from(self.ids.len()).ok()?;
        self.names.push_str(id);
        self.ids.push(Known::new(end, status));
        let (names, ids) = (&self.names, &self.ids);
        self.index.insert_unique(hash, i, |&j| {
            hasher().hash_one(name(names, ids, j as usize))
        });
        Some((i as usize, true))
    }
}

fn name<'a>(names: &'a str, ids: &[Known], i: usize) -> &'a str {
    let start = match i {
        0 => 0,
        _ => ids[i - 1].end(),
    };
    &names[start..ids[i].end()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("minion-{i:05}")).collect()
    }

    #[test]
    fn names_keep_their_order_and_empty_ids() {
        let names: Names = ["a", "", "bc", "a"].into_iter().collect();
        assert_eq!(names.len(), 4);
        assert_eq!(names.text_len(), 4);
        assert!(names.iter().eq(["a", "", "bc", "a"]));
        assert_eq!(
            serde_json::to_value(&names).expect("json"),
            serde_json::json!(["a", "", "bc", "a"])
        );
        assert!(Names::default().is_empty());
    }

    #[test]
    fn counts_each_minion_once_whatever_comes_first() {
        let mut e = Expected::default();
        assert!(!e.done(), "nothing known is not done");
        e.expect("a");
        e.expect("b");
        e.expect("a");
        assert_eq!(e.pending(), 2);
        assert!(e.mark_returned("a"));
        assert!(!e.mark_returned("a"), "a second return is not counted");
        assert_eq!(e.pending(), 1);
        // A return from a minion the job did not list is kept, not pending.
        assert!(e.mark_returned("stray"));
        assert!(!e.mark_returned("stray"));
        assert_eq!(e.pending(), 1);
        e.mark_missing("c");
        assert_eq!(e.pending(), 1, "a missing minion is not waited for");
        assert_eq!(e.pending_list(), ["b"]);
        e.mark_missing("b");
        assert!(e.done());
        assert!(e.mark_returned("b"), "a missing minion may still return");
        assert!(e.returned("b") && !e.returned("c"));
        let all: Vec<_> = e.iter().collect();
        let st = |returned, missing| Status { returned, missing };
        assert_eq!(
            all,
            [
                ("a", st(true, false)),
                ("b", st(true, true)),
                ("stray", st(true, false)),
                ("c", st(false, true)),
            ]
        );
    }

    #[test]
    fn ten_thousand_ids_are_found_and_kept_in_order() {
        let names = ids(10_000);
        let mut e = Expected::with_capacity(names.len(), names.iter().map(String::len).sum());
        for n in &names {
            e.expect(n);
        }
        assert_eq!(e.pending(), 10_000);
        for n in names.iter().rev() {
            assert!(e.mark_returned(n), "{n}");
        }
        assert!(e.done());
        assert!(e
            .iter()
            .map(|(id, _)| id)
            .eq(names.iter().map(String::as_str)));
    }

    #[test]
    fn an_id_costs_its_name_and_a_few_bytes() {
        let names = ids(30_000);
        let bytes: usize = names.iter().map(String::len).sum();
        let mut e = Expected::with_capacity(names.len(), bytes);
        for n in &names {
            e.expect(n);
        }
        let per_id = (e.heap_bytes() - bytes) / names.len();
        // 4 bytes in `ids`, a 4-byte index and a control byte in a table
        // kept at most 7/8 full (rounded up to a power of two: 30,000 ids
        // take 65,536 slots).
        assert!(per_id <= 16, "{per_id} bytes an id beyond its name");
    }

    #[test]
    fn status_bits_leave_the_end_alone() {
        let mut k = Known::new(END, Status::default());
        for (returned, missing) in [(true, false), (false, true), (true, true), (false, false)] {
            let status = Status { returned, missing };
            k.set(status);
            assert_eq!(k.status(), status);
            assert_eq!(k.end(), END as usize);
        }
    }

    #[test]
    fn a_set_is_a_few_words() {
        // Every waiting call holds one.
        let size = std::mem::size_of::<Expected>();
        assert!(size <= 88, "{size}");
    }

    #[test]
    fn ids_that_are_prefixes_of_each_other_stay_apart() {
        let mut e = Expected::default();
        for id in ["", "a", "ab", "abc", "b"] {
            e.expect(id);
        }
        assert_eq!(e.pending(), 5);
        assert!(e.mark_returned("ab"));
        assert!(e.returned("ab") && !e.returned("a") && !e.returned("abc"));
        assert_eq!(e.pending_list(), ["", "a", "abc", "b"]);
    }
}
