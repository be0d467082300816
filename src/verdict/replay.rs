//! The Milter's header edits replayed on the message's header (verdict.rs, `header_actions`),
//! and the deletions that result, in O(n log n) for n fields and edits: a Milter may send
//! thousands of edits to a header of thousands of fields, and a replay that walked the header
//! for every edit took minutes (docs/reliability.md, "Limits").
//!
//! The replay takes two passes. The first needs no order: how many fields there are, and how
//! many of each name, is known at every step, so each edit is known to insert a field at a
//! position or to change the k-th field of its name. The second gives every field its final
//! position (the inserts replayed backwards over a Fenwick tree of free slots) and then finds
//! "the k-th field of this name" with one Fenwick tree per name over its fields in that order.

use super::{is_undeletable, original_match, Action, Field, Origin, ValueMatch, VerdictOptions};
use crate::verdict::Header;
use std::collections::HashMap;

/// A header edit that passed the checks, with its value as `addheader` writes it.
pub(super) struct HeaderEdit<'a> {
    pub name: &'a [u8],
    pub value: Vec<u8>,
    pub kind: Kind,
}

pub(super) enum Kind {
    /// ADDHEADER: at the end.
    Add,
    /// INSHEADER at this 0-based position among all fields.
    Insert(u32),
    /// CHGHEADER of the index-th field of the name (1-based, 0 counts as 1); `delete` for an
    /// empty value.
    Change { index: u32, delete: bool },
}

/// Counts over positions 0..n, with the sum of a prefix and the k-th counted position each in
/// O(log n).
pub(super) struct Fenwick {
    /// 1-based: tree[i] holds the sum over (i - lowbit(i), i].
    tree: Vec<usize>,
}

impl Fenwick {
    /// Every position counted once.
    pub fn ones(n: usize) -> Fenwick {
        let tree = (0..=n).map(|i| i & i.wrapping_neg()).collect();
        Fenwick { tree }
    }

    /// No position counted.
    pub fn zeros(n: usize) -> Fenwick {
        Fenwick {
            tree: vec![0; n + 1],
        }
    }

    fn len(&self) -> usize {
        self.tree.len() - 1
    }

    /// Counts position `i` once more (`add`) or once less.
    pub fn change(&mut self, i: usize, add: bool) {
        let mut i = i + 1;
        while i < self.tree.len() {
            self.tree[i] = if add {
                self.tree[i] + 1
            } else {
                self.tree[i].saturating_sub(1)
            };
            i += i & i.wrapping_neg();
        }
    }

    /// How many are counted at positions 0..=i.
    pub fn prefix(&self, i: usize) -> usize {
        let mut i = (i + 1).min(self.len());
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }

    /// The position of the k-th counted one (k from 1), if there are k.
    pub fn kth(&self, k: usize) -> Option<usize> {
        if k == 0 {
            return None;
        }
        let n = self.len();
        let mut pos = 0;
        let mut rest = k;
        let mut step = if n == 0 { 0 } else { 1 << n.ilog2() };
        while step > 0 {
            if pos + step <= n && self.tree[pos + step] < rest {
                pos += step;
                rest -= self.tree[pos];
            }
            step >>= 1;
        }
        (pos < n).then_some(pos)
    }
}

/// Field names compared as sendmail and Sieve compare them: ignoring ASCII case.
#[derive(Default)]
struct Names {
    ids: HashMap<Vec<u8>, usize>,
}

impl Names {
    fn id(&mut self, name: &[u8]) -> usize {
        let next = self.ids.len();
        *self.ids.entry(name.to_ascii_lowercase()).or_insert(next)
    }

    fn count(&self) -> usize {
        self.ids.len()
    }
}

/// One step of the replay, in the Milter's order.
enum Step {
    /// A field comes in (an original one at the start, or one an edit adds).
    Insert(usize),
    /// CHGHEADER of the want-th field of a name.
    Change {
        group: usize,
        want: usize,
        value: Vec<u8>,
        delete: bool,
    },
}

/// The first pass: the fields, where each came in, and the steps, before any order is known.
#[derive(Default)]
struct Replay {
    names: Names,
    fields: Vec<Field>,
    /// The name (group) of each field.
    group_of: Vec<usize>,
    /// How many fields of each name there are so far.
    of_name: Vec<usize>,
    /// Each field's position among all fields when it came in, in the order they came.
    inserts: Vec<(usize, usize)>,
    steps: Vec<Step>,
}

impl Replay {
    fn insert(&mut self, field: Field, pos: usize) {
        let group = self.group(&field.name);
        self.of_name[group] += 1;
        let id = self.fields.len();
        self.fields.push(field);
        self.group_of.push(group);
        self.inserts.push((id, pos));
        self.steps.push(Step::Insert(id));
    }

    fn group(&mut self, name: &[u8]) -> usize {
        let group = self.names.id(name);
        if group == self.of_name.len() {
            self.of_name.push(0);
        }
        group
    }

    fn edit(&mut self, e: HeaderEdit<'_>) {
        let len = self.fields.len();
        let added = |top: bool, value: Vec<u8>| Field {
            name: e.name.to_vec(),
            value,
            origin: Origin::Added { top },
            deleted: false,
            changed: false,
        };
        match e.kind {
            Kind::Add => self.insert(added(false, e.value), len),
            Kind::Insert(index) => {
                let pos = usize::try_from(index).unwrap_or(usize::MAX).min(len);
                self.insert(added(pos < len, e.value), pos);
            }
            Kind::Change { index, delete } => {
                let want = usize::try_from(index.max(1)).unwrap_or(usize::MAX);
                let group = self.group(e.name);
                if want <= self.of_name[group] {
                    self.steps.push(Step::Change {
                        group,
                        want,
                        value: e.value,
                        delete,
                    });
                } else if !delete {
                    self.insert(added(false, e.value), len);
                }
            }
        }
    }

    /// Each field's final position: the inserts replayed backwards, each taking the free slot
    /// its position names among those the later inserts left free.
    fn final_slots(&self) -> Vec<usize> {
        let n = self.fields.len();
        let mut free = Fenwick::ones(n);
        let mut slot = vec![0; n];
        for &(id, pos) in self.inserts.iter().rev() {
            // pos is at most the number of fields before this one, so the slot exists.
            let s = free.kth(pos + 1).unwrap_or(n.saturating_sub(1));
            free.change(s, false);
            slot[id] = s;
        }
        slot
    }

    /// The second pass: the changes applied to the k-th field of their name, in order.
    fn finish(mut self) -> Vec<Field> {
        let slot = self.final_slots();
        let n = self.fields.len();
        let mut at_slot = vec![0; n];
        for (id, &s) in slot.iter().enumerate() {
            at_slot[s] = id;
        }
        // The fields of each name in final order, and each field's rank among them.
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); self.of_name.len()];
        let mut rank = vec![0; n];
        for &id in &at_slot {
            let g = self.group_of[id];
            rank[id] = members[g].len();
            members[g].push(id);
        }
        let mut present: Vec<Fenwick> = members.iter().map(|m| Fenwick::zeros(m.len())).collect();
        for step in std::mem::take(&mut self.steps) {
            match step {
                Step::Insert(id) => present[self.group_of[id]].change(rank[id], true),
                Step::Change {
                    group,
                    want,
                    value,
                    delete,
                } => {
                    let Some(k) = present[group].kth(want) else {
                        continue;
                    };
                    change(&mut self.fields[members[group][k]], value, delete);
                }
            }
        }
        let mut placed: Vec<Option<Field>> = (0..n).map(|_| None).collect();
        for (id, f) in self.fields.into_iter().enumerate() {
            placed[slot[id]] = Some(f);
        }
        placed.into_iter().flatten().collect()
    }
}

fn change(f: &mut Field, value: Vec<u8>, delete: bool) {
    if matches!(f.origin, Origin::Original(_)) && is_undeletable(&f.name) {
        log::warn!(
            "CHGHEADER of \"{}\" left out: Sieve may not delete that field",
            crate::error::escape(&f.name)
        );
        return;
    }
    f.deleted = delete;
    f.value = value;
    f.changed = true;
}

/// The header after the edits, in its final order, with sendmail's semantics: CHGHEADER's index
/// counts the fields of its name (removed ones too), a change of a field that is not there adds
/// it at the end, an empty value removes; INSHEADER's index counts all fields, and an insert
/// before the last field is placed at the top in Sieve (`Origin::Added { top: true }`).
pub(super) fn replay(originals: &[Header], edits: Vec<HeaderEdit<'_>>) -> Vec<Field> {
    let mut r = Replay::default();
    for (i, h) in originals.iter().enumerate() {
        let field = Field {
            name: h.name.clone(),
            value: Vec::new(),
            origin: Origin::Original(i),
            deleted: false,
            changed: false,
        };
        r.insert(field, i);
    }
    for e in edits {
        r.edit(e);
    }
    r.finish()
}

/// The original fields of one name with one value (`ValueMatch::Is`).
#[derive(Default)]
struct SameValue {
    /// How many of them stay.
    staying: usize,
    fields: Vec<usize>,
}

/// The deletions, before any addition and against the header as it came, last field first, so
/// that an earlier field's position is still its original one. With CONTEXT_EDITS a field is
/// named by its value alone when that value can delete no field that stays; otherwise, and
/// without CONTEXT_EDITS, by its position (`:index`) among the fields of its name at that point.
///
/// Linear but for the Fenwick trees: the fields are grouped by name once, each group counts the
/// fields still present and the patterns among them, and each value the fields that stay.
pub(super) fn delete_actions(
    originals: &[Header],
    options: &VerdictOptions,
    fields: &[Field],
    actions: &mut Vec<Action>,
) {
    let n = originals.len();
    let mut doomed = vec![false; n];
    for f in fields {
        if let Origin::Original(i) = f.origin {
            doomed[i] = f.changed;
        }
    }
    if !doomed.contains(&true) {
        return;
    }
    let mut names = Names::default();
    let group_of: Vec<usize> = originals.iter().map(|h| names.id(&h.name)).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); names.count()];
    let mut rank = vec![0; n];
    for (i, &g) in group_of.iter().enumerate() {
        rank[i] = members[g].len();
        members[g].push(i);
    }
    let mut has_doomed = vec![false; members.len()];
    for (i, &g) in group_of.iter().enumerate() {
        has_doomed[g] |= doomed[i];
    }
    // How each field of a name that loses a field is named by value (CONTEXT_EDITS only).
    let mut matches: Vec<Option<ValueMatch>> = vec![None; n];
    if options.context_edits {
        for (i, h) in originals.iter().enumerate() {
            if has_doomed[group_of[i]] {
                matches[i] = Some(original_match(&h.value));
            }
        }
    }
    // Per group, the patterns still present; per (group, value), how many fields with that
    // value stay, and which fields have it.
    let mut patterns = vec![0usize; members.len()];
    let mut by_value: HashMap<(usize, &[u8]), SameValue> = HashMap::new();
    for (i, m) in matches.iter().enumerate() {
        match m {
            Some(ValueMatch::Matches(_)) => patterns[group_of[i]] += 1,
            Some(ValueMatch::Is(v)) => {
                let entry = by_value.entry((group_of[i], v.as_slice())).or_default();
                entry.staying += usize::from(!doomed[i]);
                entry.fields.push(i);
            }
            None => {}
        }
    }
    // Which fields are still there: a flag each, and per group a count by rank.
    let mut present = vec![true; n];
    let mut present_in: Vec<Fenwick> = members.iter().map(|m| Fenwick::ones(m.len())).collect();
    let remove = |i: usize,
                  present: &mut Vec<bool>,
                  present_in: &mut Vec<Fenwick>,
                  patterns: &mut Vec<usize>| {
        present[i] = false;
        present_in[group_of[i]].change(rank[i], false);
        if matches!(matches[i], Some(ValueMatch::Matches(_))) {
            patterns[group_of[i]] -= 1;
        }
    };
    for i in (0..n).rev() {
        if !doomed[i] || !present[i] {
            continue;
        }
        let g = group_of[i];
        let position = present_in[g].prefix(rank[i]);
        remove(i, &mut present, &mut present_in, &mut patterns);
        let name = originals[i].name.clone();
        let Some(wanted) = matches[i].clone() else {
            actions.push(Action::DeleteHeader {
                index: Some(position),
                name,
                value: None,
            });
            continue;
        };
        let mut index = Some(position);
        if let ValueMatch::Is(v) = &wanted {
            // Alone, the value deletes every field of that name and value: fine when each of
            // them goes anyway, not when one of them stays or might match (a pattern).
            let same = by_value.get(&(g, v.as_slice()));
            if let Some(SameValue { staying: 0, fields }) = same {
                if patterns[g] == 0 {
                    index = None;
                    for &j in fields {
                        if present[j] {
                            remove(j, &mut present, &mut present_in, &mut patterns);
                        }
                    }
                }
            }
        }
        actions.push(Action::DeleteHeader {
            index,
            name,
            value: Some(wanted),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SieveDialect, SieveLimits};

    /// The replay as it was before, walking the header for every edit: the reference.
    fn replay_reference(originals: &[Header], edits: Vec<HeaderEdit<'_>>) -> Vec<Field> {
        let mut fields: Vec<Field> = originals
            .iter()
            .enumerate()
            .map(|(i, h)| Field {
                name: h.name.clone(),
                value: Vec::new(),
                origin: Origin::Original(i),
                deleted: false,
                changed: false,
            })
            .collect();
        for e in edits {
            let added = |top: bool, value: Vec<u8>| Field {
                name: e.name.to_vec(),
                value,
                origin: Origin::Added { top },
                deleted: false,
                changed: false,
            };
            match e.kind {
                Kind::Add => fields.push(added(false, e.value)),
                Kind::Insert(index) => {
                    let pos = (index as usize).min(fields.len());
                    let top = pos < fields.len();
                    fields.insert(pos, added(top, e.value));
                }
                Kind::Change { index, delete } => {
                    let want = index.max(1) as usize;
                    let target = fields
                        .iter_mut()
                        .filter(|f| f.name.eq_ignore_ascii_case(e.name))
                        .nth(want - 1);
                    match target {
                        Some(f) => change(f, e.value, delete),
                        None if !delete => fields.push(added(false, e.value)),
                        None => {}
                    }
                }
            }
        }
        fields
    }

    /// The deletions as they were before, looking at every field of the name for each.
    fn delete_reference(
        originals: &[Header],
        options: &VerdictOptions,
        fields: &[Field],
        actions: &mut Vec<Action>,
    ) {
        let mut doomed = vec![false; originals.len()];
        for f in fields {
            if let Origin::Original(i) = f.origin {
                doomed[i] = f.changed;
            }
        }
        let mut present = vec![true; originals.len()];
        for i in (0..originals.len()).rev() {
            if !doomed[i] || !present[i] {
                continue;
            }
            let name = &originals[i].name;
            let same: Vec<usize> = (0..originals.len())
                .filter(|&j| present[j] && originals[j].name.eq_ignore_ascii_case(name))
                .collect();
            let position = same.iter().position(|&j| j == i).map_or(1, |p| p + 1);
            present[i] = false;
            if !options.context_edits {
                actions.push(Action::DeleteHeader {
                    index: Some(position),
                    name: name.clone(),
                    value: None,
                });
                continue;
            }
            let wanted = original_match(&originals[i].value);
            let mut index = Some(position);
            if let ValueMatch::Is(v) = &wanted {
                let others: Vec<(usize, ValueMatch)> = same
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| (j, original_match(&originals[j].value)))
                    .collect();
                let alone = others.iter().all(|(j, m)| match m {
                    ValueMatch::Is(w) => w != v || doomed[*j],
                    ValueMatch::Matches(_) => false,
                });
                if alone {
                    index = None;
                    for (j, m) in &others {
                        if *m == wanted {
                            present[*j] = false;
                        }
                    }
                }
            }
            actions.push(Action::DeleteHeader {
                index,
                name: name.clone(),
                value: Some(wanted),
            });
        }
    }

    #[test]
    fn fenwick_counts_and_finds() {
        let mut f = Fenwick::ones(10);
        assert_eq!(f.prefix(9), 10);
        assert_eq!(f.kth(1), Some(0));
        assert_eq!(f.kth(10), Some(9));
        assert_eq!(f.kth(11), None);
        assert_eq!(f.kth(0), None);
        f.change(0, false);
        f.change(5, false);
        assert_eq!(f.prefix(5), 4);
        assert_eq!(f.kth(1), Some(1));
        assert_eq!(f.kth(5), Some(6));
        let mut z = Fenwick::zeros(7);
        assert_eq!(z.kth(1), None);
        z.change(6, true);
        assert_eq!(z.kth(1), Some(6));
        assert_eq!(Fenwick::zeros(0).kth(1), None);
    }

    /// On random headers and edits (few names and values, so that they collide), the replay
    /// and the deletions give exactly what the plain versions give.
    #[test]
    fn equal_to_the_plain_versions() {
        let mut next = crate::test_support::xorshift(0x51ed_2701_aa55_0f0fu64);
        let names: [&[u8]; 5] = [b"Subject", b"SUBJECT", b"X-A", b"Received", b"x-b"];
        let values: [&[u8]; 5] = [b" one", b" two", b" one\n two", b" =?utf-8?q?a?=", b""];
        for case in 0..3000 {
            let mut pick = |n: usize| (next() % n as u64) as usize;
            let originals: Vec<Header> = (0..pick(12))
                .map(|_| Header {
                    name: names[pick(5)].to_vec(),
                    value: values[pick(5)].to_vec(),
                })
                .collect();
            let plan: Vec<(usize, usize, u32, usize)> = (0..pick(14))
                .map(|_| (pick(3), pick(5), pick(16) as u32, pick(5)))
                .collect();
            let edits = || -> Vec<HeaderEdit<'static>> {
                plan.iter()
                    .map(|&(kind, name, index, value)| HeaderEdit {
                        name: names[name],
                        value: values[value].to_vec(),
                        kind: match kind {
                            0 => Kind::Add,
                            1 => Kind::Insert(index),
                            _ => Kind::Change {
                                index: if index == 15 { u32::MAX } else { index },
                                delete: values[value].is_empty(),
                            },
                        },
                    })
                    .collect()
            };
            let fast = replay(&originals, edits());
            let plain = replay_reference(&originals, edits());
            assert_eq!(format!("{fast:?}"), format!("{plain:?}"), "case {case}");
            for context_edits in [false, true] {
                let options = VerdictOptions {
                    context_edits,
                    dialect: SieveDialect::Rfc5293,
                    quarantine_folder: String::new(),
                    limits: SieveLimits::default(),
                };
                let (mut a, mut b) = (Vec::new(), Vec::new());
                delete_actions(&originals, &options, &fast, &mut a);
                delete_reference(&originals, &options, &plain, &mut b);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "case {case}");
            }
        }
    }
}
