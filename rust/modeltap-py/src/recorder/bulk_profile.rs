//! `log_batch` profiles its rows in the caller's own call: the numeric
//! features column by column, in cache-sized tiles of rows spread over
//! threads (the code path of `Reference.drift`), the rest row by row through
//! the same [`Profiler`] the drain thread uses. The resulting window profile
//! goes into the ring ahead of the rows (`SlotKind::Profile`); only the rows
//! sampled in (`sample_rate`) follow it, marked as profiled, and the others
//! are counted `sampled_out` at once. So a wide batch costs the drain thread
//! one merge instead of a profile update per value, and the ring carries
//! only the rows that are kept.

use std::ops::Range;

use modeltap_core::batch::{Schema, VocabEntry};
use modeltap_core::profile::{add_numeric_slice, Binner, Compiled, Profiler};
use modeltap_core::proto;
use modeltap_core::record::{flags, Slot};
use numpy::ndarray::ArrayView2;

use super::features::XView;
use super::vocab::Vocab;

/// Fewest rows a `log_batch` call profiles itself; smaller batches are
/// profiled record by record on the drain thread.
pub(super) const MIN_ROWS: usize = 256;

/// Profilers a recorder keeps for calls to come (more concurrent calls
/// build their own and drop it after).
pub(super) const POOL: usize = 4;

/// Rows and numeric features of a tile: a matrix is read a block of
/// features at a time, and within a block a tile of rows at a time into a
/// column-major scratch (`TILE_ROWS * TILE_FEATURES` doubles, 128 KiB). The
/// block's binning tables and the scratch then stay in the core's own
/// cache however wide the rows are.
const TILE_ROWS: usize = 256;
const TILE_FEATURES: usize = 64;

/// The recorder's profiler for `log_batch` calls, kept between calls so
/// that its binning tables and learned category codes are built once.
#[derive(Debug)]
pub(super) struct CallerProfiler {
    pub prof: Profiler,
    /// Per schema feature: vocabulary codes learned so far.
    synced: Vec<usize>,
    synced_labels: usize,
}

impl CallerProfiler {
    pub fn new(compiled: std::sync::Arc<Compiled>, schema: &Schema, window_ns: u64) -> Self {
        Self {
            prof: Profiler::new(compiled, schema, window_ns),
            synced: vec![0; schema.n_features()],
            synced_labels: 0,
        }
    }

    /// Learns the category and label codes interned since the last call.
    pub fn sync(&mut self, features: Option<&[Option<Vocab>]>, labels: &Vocab) {
        let mut fresh: Vec<VocabEntry> = Vec::new();
        if let Some(vocabs) = features {
            for (f, v) in vocabs.iter().enumerate() {
                if let (Some(v), Some(seen)) = (v, self.synced.get_mut(f)) {
                    if v.len() > *seen {
                        let got = v.entries_from(*seen);
                        *seen += got.len();
                        fresh.extend(got);
                    }
                }
            }
        }
        if labels.len() > self.synced_labels {
            let got = labels.entries_from(self.synced_labels);
            self.synced_labels += got.len();
            fresh.extend(got);
        }
        if !fresh.is_empty() {
            self.prof.on_vocab(&fresh);
        }
    }
}

/// Flag bits of one numeric value, as `parse::check` sets them.
#[inline]
fn value_flags(v: f64) -> u32 {
    (u32::from(v.is_nan()) * flags::MISSING) | (u32::from(v.is_infinite()) * flags::NONFINITE)
}

/// What a worker profiles: the numeric features (schema indices) whose
/// flags it gathers, and among them `(position in features, binner)` of
/// those with a reference column.
struct Job<'a> {
    features: &'a [usize],
    profiled: &'a [(usize, &'a Binner)],
    templates: &'a [proto::ColumnProfile],
}

/// Reads rows `rows` of a 2-D array a tile at a time (`TILE_ROWS` rows by
/// `TILE_FEATURES` features) into a column-major scratch (a row-major
/// matrix row by row, anything else column by column), ORs each row's
/// value flags into `row_flags` (indexed from `rows.start`) and adds the
/// profiled columns; returns their profiles.
fn work<T: Copy + Into<f64>>(
    a: &ArrayView2<'_, T>,
    job: &Job<'_>,
    rows: Range<usize>,
    row_flags: &mut [u32],
) -> Vec<proto::ColumnProfile> {
    let mut out: Vec<proto::ColumnProfile> = job.templates.to_vec();
    let (tile_features, tile_rows) = (TILE_FEATURES, TILE_ROWS);
    let mut scratch = vec![0.0f64; tile_features.min(job.features.len()) * tile_rows];
    let row_major = a.nrows() > 0 && a.row(0).as_slice().is_some();
    // `job.profiled` is in feature order: the profiled features of a block
    // are a run of it.
    let mut runs = Vec::new();
    let mut next_profiled = 0;
    for (b, block) in job.features.chunks(tile_features).enumerate() {
        let first = b * tile_features;
        let run_start = next_profiled;
        while next_profiled < job.profiled.len()
            && job.profiled[next_profiled].0 < first + block.len()
        {
            next_profiled += 1;
        }
        runs.push((first, block, run_start..next_profiled));
    }
    // Block by block: a block's binning tables stay in the core's cache
    // while all the rows pass.
    for (first, block, run) in &runs {
        let (first, run_start) = (*first, run.start);
        let profiled = &job.profiled[run.clone()];
        let mut r = rows.start;
        while r < rows.end {
            let t = r..(r + tile_rows).min(rows.end);
            let len = t.len();
            let flags_tile = &mut row_flags[t.start - rows.start..t.end - rows.start];
            if row_major {
                for (j, row) in t.clone().enumerate() {
                    let Some(values) = a.row(row).to_slice() else {
                        continue;
                    };
                    let mut fl = 0;
                    for (k, &f) in block.iter().enumerate() {
                        let v: f64 = values[f].into();
                        fl |= value_flags(v);
                        scratch[k * tile_rows + j] = v;
                    }
                    flags_tile[j] |= fl;
                }
            } else {
                for (k, &f) in block.iter().enumerate() {
                    let col = a.column(f);
                    let dst = &mut scratch[k * tile_rows..k * tile_rows + len];
                    for ((d, row), fl) in dst.iter_mut().zip(t.clone()).zip(flags_tile.iter_mut()) {
                        let v: f64 = col[row].into();
                        *fl |= value_flags(v);
                        *d = v;
                    }
                }
            }
            for (i, &(k, binner)) in profiled.iter().enumerate() {
                let at = (k - first) * tile_rows;
                add_numeric_slice(&mut out[run_start + i], binner, &scratch[at..at + len]);
            }
            r = t.end;
        }
    }
    out
}

/// Profiles the numeric features of every row of `x` into `columns` (the
/// window's columns, by reference column index) and returns each row's
/// value flags. Rows are split among the machine's threads.
pub(super) fn profile_numeric(
    x: &XView<'_>,
    schema: &Schema,
    prof: &Profiler,
    columns: &mut [proto::ColumnProfile],
) -> Vec<u32> {
    let (n, _) = x.dim();
    let features: Vec<usize> = (0..schema.n_features())
        .filter(|&c| !schema.categorical[c])
        .collect();
    let mut profiled: Vec<(usize, &Binner)> = Vec::new();
    let mut cols: Vec<usize> = Vec::new();
    for &(f, col) in prof.numeric_features() {
        if let Some(k) = features.iter().position(|&g| g == f) {
            profiled.push((k, prof.binner(col)));
            cols.push(col);
        }
    }
    let templates: Vec<proto::ColumnProfile> = cols.iter().map(|&c| columns[c].clone()).collect();
    let job = Job {
        features: &features,
        profiled: &profiled,
        templates: &templates,
    };
    let mut row_flags = vec![0u32; n];
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(n.div_ceil(TILE_ROWS / 4).max(1));
    let per = n.div_ceil(threads.max(1)).max(1);
    let mut parts: Vec<Vec<proto::ColumnProfile>> = Vec::with_capacity(threads);
    std::thread::scope(|sc| {
        let handles: Vec<_> = row_flags
            .chunks_mut(per)
            .enumerate()
            .map(|(i, chunk)| {
                let rows = i * per..i * per + chunk.len();
                let job = &job;
                sc.spawn(move || match x {
                    XView::F64(a) => work(a, job, rows, chunk),
                    XView::F32(a) => work(a, job, rows, chunk),
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => parts.push(done),
                // Carried on, for the caller's guard to report.
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
    });
    for part in &parts {
        for (i, &c) in cols.iter().enumerate() {
            modeltap_core::profile::merge_column(&mut columns[c], &part[i]);
        }
    }
    row_flags
}

/// A scratch record for the row-by-row part of a batch's profile: wide
/// enough for the batch's probabilities inline.
pub(super) fn scratch_slot(schema: &Schema, prob_width: usize) -> Slot {
    Slot::with_stride(schema.n_features() + schema.out_cap + prob_width.max(schema.prob_cap))
}
