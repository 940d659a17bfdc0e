//! The page-state map: one [`PageState`] per 4 KiB guest page, stored as runs (a
//! `BTreeMap` from first page to `(end, state)`), so a bulk operation over a 4 GiB
//! guest costs a few map operations, not a million.

use std::collections::BTreeMap;

/// Size of a page as the guest validates or accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
}

impl PageSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 4096,
            PageSize::Size2M => 2 << 20,
        }
    }

    /// 4 KiB pages.
    pub const fn pages(self) -> u64 {
        self.bytes() / 4096
    }
}

/// The state of one 4 KiB guest page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Shared with the host (SNP: hypervisor-owned; TDX: mapped through the shared
    /// EPT): the VMM and the guest's shared accesses see the same bytes.
    Shared,
    /// Private but not validated (SNP) / not accepted (TDX): any guest access faults.
    Private,
    /// Private and validated / accepted, as part of a unit of this size (a 2 MiB unit
    /// is the 2 MiB-aligned block holding the page, validated as one RMP entry / one
    /// SEPT leaf).
    Validated(PageSize),
}

impl PageState {
    /// Whether the page is private (validated or not).
    pub fn is_private(self) -> bool {
        !matches!(self, PageState::Shared)
    }
}

/// A maximal run of pages `[start, end)` (page numbers) in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First page.
    pub start: u64,
    /// One past the last page.
    pub end: u64,
    /// State of every page of the run.
    pub state: PageState,
}

/// Page states of the guest's RAM, as runs. Pages outside RAM (the MMIO hole) have no
/// state.
#[derive(Debug, Clone, Default)]
pub struct PageMap {
    runs: BTreeMap<u64, (u64, PageState)>,
}

/// A page range not entirely inside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("pages {start:#x}..{end:#x} are not all guest RAM (first missing page {missing:#x})")]
pub struct OutsideRam {
    /// First page of the range.
    pub start: u64,
    /// One past the last page.
    pub end: u64,
    /// The first page without a state.
    pub missing: u64,
}

impl PageMap {
    /// A map where each `(first page, page count)` range of RAM is in `state`.
    pub fn new(ranges: &[(u64, u64)], state: PageState) -> Self {
        let mut m = Self::default();
        for &(start, n) in ranges {
            if n > 0 {
                m.runs.insert(start, (start + n, state));
            }
        }
        m.merge_around(0);
        for &(start, n) in ranges {
            m.merge_around(start);
            m.merge_around(start + n);
        }
        m
    }

    /// The state of page `page`, if it is RAM.
    pub fn get(&self, page: u64) -> Option<PageState> {
        let (_, &(end, state)) = self.runs.range(..=page).next_back()?;
        (page < end).then_some(state)
    }

    /// The runs covering `[start, end)`, clipped to it; an error if a page of the range
    /// is not RAM.
    pub fn runs(&self, start: u64, end: u64) -> Result<Vec<Run>, OutsideRam> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self
            .runs
            .range(..=start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(start);
        for (&s, &(e, state)) in self.runs.range(first..end) {
            if e <= at {
                continue;
            }
            if s > at {
                break;
            }
            let run_end = e.min(end);
            out.push(Run {
                start: at,
                end: run_end,
                state,
            });
            at = run_end;
            if at >= end {
                break;
            }
        }
        if at < end {
            return Err(OutsideRam {
                start,
                end,
                missing: at,
            });
        }
        Ok(out)
    }

    /// Sets every page of `[start, end)` to `state`; returns the runs as they were.
    pub fn set(&mut self, start: u64, end: u64, state: PageState) -> Result<Vec<Run>, OutsideRam> {
        let old = self.runs(start, end)?;
        if start == end {
            return Ok(old);
        }
        self.split_at(start);
        self.split_at(end);
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            self.runs.remove(&s);
        }
        self.runs.insert(start, (end, state));
        self.merge_around(end);
        self.merge_around(start);
        Ok(old)
    }

    /// Number of runs (for tests and the cost notes).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Every run, in order.
    pub fn all(&self) -> impl Iterator<Item = Run> + '_ {
        self.runs
            .iter()
            .map(|(&start, &(end, state))| Run { start, end, state })
    }

    /// Makes `page` the start of a run if it is inside one.
    fn split_at(&mut self, page: u64) {
        if let Some((&s, &(e, state))) = self.runs.range(..page).next_back() {
            if page < e {
                self.runs.insert(s, (page, state));
                self.runs.insert(page, (e, state));
            }
        }
    }

    /// Merges the run starting at `page` into the run ending there, if contiguous and
    /// in the same state.
    fn merge_around(&mut self, page: u64) {
        let Some(&(next_end, next_state)) = self.runs.get(&page) else {
            return;
        };
        if let Some((&s, &(e, state))) = self.runs.range(..page).next_back() {
            if e == page && state == next_state {
                self.runs.remove(&page);
                self.runs.insert(s, (next_end, state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: PageState = PageState::Private;
    const S: PageState = PageState::Shared;
    const V4: PageState = PageState::Validated(PageSize::Size4K);

    #[test]
    fn runs_split_and_merge() {
        let mut m = PageMap::new(&[(0, 100), (200, 50)], P);
        assert_eq!(m.run_count(), 2);
        assert_eq!(m.get(99), Some(P));
        assert_eq!(m.get(100), None);
        m.set(10, 20, S).unwrap();
        assert_eq!(m.run_count(), 4);
        assert_eq!(m.get(9), Some(P));
        assert_eq!(m.get(10), Some(S));
        assert_eq!(m.get(19), Some(S));
        assert_eq!(m.get(20), Some(P));
        // Back to one run.
        m.set(10, 20, P).unwrap();
        assert_eq!(m.run_count(), 2);
        // Across a run boundary inside the range, clipped output.
        m.set(5, 8, V4).unwrap();
        let r = m.runs(6, 12).unwrap();
        assert_eq!(
            r,
            vec![
                Run {
                    start: 6,
                    end: 8,
                    state: V4
                },
                Run {
                    start: 8,
                    end: 12,
                    state: P
                }
            ]
        );
        // The hole is refused, and nothing changes.
        assert_eq!(
            m.set(90, 210, S).unwrap_err(),
            OutsideRam {
                start: 90,
                end: 210,
                missing: 100
            }
        );
        assert_eq!(m.get(95), Some(P));
        assert!(m.runs(250, 251).is_err());
        assert_eq!(m.runs(249, 250).unwrap().len(), 1);
    }

    #[test]
    fn a_large_guest_in_2m_steps_stays_small() {
        // 4 GiB in 4 KiB pages, validated 2 MiB at a time: one run at the end.
        let pages = 1u64 << 20;
        let mut m = PageMap::new(&[(0, pages)], P);
        for u in (0..pages).step_by(512) {
            m.set(u, u + 512, PageState::Validated(PageSize::Size2M))
                .unwrap();
            assert!(m.run_count() <= 2);
        }
        assert_eq!(m.run_count(), 1);
    }
}
