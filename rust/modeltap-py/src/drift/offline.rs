//! Offline profiling: whole columns against a reference (no agent), rows
//! split among threads, read in cache-sized tiles across every column.

use std::collections::HashSet;
use std::ops::Range;

use modeltap_core::near::Near;
use modeltap_core::profile;
use modeltap_core::proto;
use numpy::ndarray::ArrayView1;
use numpy::PyReadonlyArray1;
use prost::Message;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rustc_hash::FxHashMap;

use super::code_array::{CodeArray, CodeView};
use super::number_categories::NumberCategories;
use super::numeric_array::{NumArray, NumView};
use super::objects::encode_objects;
use super::reference_err;
use super::text_array::{TextArg, TextArray, TextJob, ViewArg};
use crate::errors::guard;

/// Bytes of a tile of rows across all columns: a row-major matrix is read
/// once, in order, a tile at a time (gathered into a column-major scratch
/// that stays in the outer caches), and each column's binning tables are
/// reloaded only once per tile.
const TILE_BYTES: usize = 2 * 1024 * 1024;

/// Profiles whole columns against a reference (offline data, no agent):
/// `numeric` is a list of `(column_index, float64 or float32 array)`,
/// `categorical` of `(column_index, integer codes (negative for missing),
/// dictionary of values)`. Arrays may have any stride (the columns of a
/// row-major matrix are read in place). Rows are split among threads, each
/// reading tiles of rows across every column (cache-sized, so a row-major
/// matrix is read once), with the GIL released; the threads' profiles are
/// merged. Returns an encoded window profile covering `[start, start +
/// width)`.
///
/// `text` holds categorical columns of text as Arrow lays them out:
/// `(column_index, offsets, utf8 bytes, validity bitmap or None, bit
/// offset)`, and `views` those laid out as Arrow `string_view` (polars):
/// `(column_index, views, [data buffers], validity bitmap or None, bit
/// offset)`; their values are looked up by bytes in the threads.
///
/// `objects` holds categorical columns of Python strings (`(column_index,
/// object array)`, a pandas object column): the calling thread encodes
/// them, holding the GIL, while the threads profile the other columns.
/// Returns `None` when one of them holds anything but strings and missing
/// values (for Arrow to spell), else the encoded profile.
#[pyfunction]
#[pyo3(signature = (reference, numeric, categorical, start_unix_nano=0, width_nano=0, text=Vec::new(),
    number_categories=Vec::new(), views=Vec::new(), objects=Vec::new()))]
#[allow(clippy::too_many_lines, clippy::too_many_arguments)]
pub fn profile_columns<'py>(
    py: Python<'py>,
    reference: &[u8],
    numeric: Vec<(usize, Bound<'py, PyAny>)>,
    categorical: Vec<(usize, Bound<'py, PyAny>, Vec<String>)>,
    start_unix_nano: u64,
    width_nano: u64,
    text: Vec<TextArg<'py>>,
    number_categories: Vec<(usize, Bound<'py, PyAny>)>,
    views: Vec<ViewArg<'py>>,
    objects: Vec<(usize, PyReadonlyArray1<'py, Py<PyAny>>)>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guard(|| {
        let r = profile::decode_reference(reference).map_err(|e| reference_err(&e))?;
        if start_unix_nano.checked_add(width_nano).is_none() {
            return Err(PyValueError::new_err("the window ends past 2^64 ns"));
        }
        let compiled = profile::Compiled::new(r);
        let ncols = compiled.reference.columns.len();
        let mut seen = HashSet::new();
        for (i, _) in &numeric {
            if *i >= ncols || compiled.reference.columns[*i].numeric.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a numeric reference column"
                )));
            }
            if !seen.insert(*i) {
                return Err(PyValueError::new_err(format!("column {i} given twice")));
            }
        }
        let cat_indices: Vec<usize> = categorical
            .iter()
            .map(|c| c.0)
            .chain(text.iter().map(|t| t.0))
            .chain(views.iter().map(|t| t.0))
            .chain(number_categories.iter().map(|t| t.0))
            .chain(objects.iter().map(|t| t.0))
            .collect();
        for i in &cat_indices {
            if *i >= ncols || compiled.reference.columns[*i].categorical.is_none() {
                return Err(PyValueError::new_err(format!(
                    "column {i} is not a categorical reference column"
                )));
            }
            if !seen.insert(*i) {
                return Err(PyValueError::new_err(format!("column {i} given twice")));
            }
        }
        let num_arrays: Vec<(usize, NumArray<'py>)> = numeric
            .iter()
            .map(|(i, a)| NumArray::read(a).map(|a| (*i, a)))
            .collect::<PyResult<_>>()?;
        let cat_arrays: Vec<(usize, CodeArray<'py>, &Vec<String>)> = categorical
            .iter()
            .map(|(i, a, d)| CodeArray::read(a).map(|a| (*i, a, d)))
            .collect::<PyResult<_>>()?;
        let num: Vec<(usize, NumView<'_>, &profile::Binner)> = num_arrays
            .iter()
            .map(|(i, a)| (*i, a.view(), compiled.binner(*i)))
            .collect();
        let cat: Vec<(usize, CodeView<'_>, Vec<usize>)> = cat_arrays
            .iter()
            .map(|(i, a, d)| {
                (
                    *i,
                    a.view(),
                    d.iter().map(|v| compiled.bucket(*i, v)).collect(),
                )
            })
            .collect();
        let mut text_arrays: Vec<(usize, TextArray<'py>)> = text
            .iter()
            .map(|t| TextArray::read(t).map(|a| (t.0, a)))
            .collect::<PyResult<_>>()?;
        text_arrays.extend(views.iter().map(|v| (v.0, TextArray::read_views(v))));
        let texts: Vec<TextJob<'_>> = text_arrays
            .iter()
            .map(|(i, a)| {
                let buckets = compiled.buckets[*i]
                    .iter()
                    .map(|(k, &b)| (k.as_bytes(), b))
                    .collect();
                a.view().map(|v| (*i, v, buckets, compiled.miss_bucket(*i)))
            })
            .collect::<PyResult<_>>()?;
        let number_arrays: Vec<(usize, NumArray<'py>)> = number_categories
            .iter()
            .map(|(i, a)| NumArray::read(a).map(|a| (*i, a)))
            .collect::<PyResult<_>>()?;
        let numcats: Vec<NumberCategories<'_>> = number_arrays
            .iter()
            .map(|(i, a)| NumberCategories {
                col: *i,
                values: a.view(),
            })
            .collect();
        let rows = num
            .first()
            .map(|c| c.1.len())
            .or_else(|| cat.first().map(|c| c.1.len()))
            .or_else(|| texts.first().map(|c| c.1.len()))
            .or_else(|| numcats.first().map(|c| c.values.len()))
            .or_else(|| objects.first().map(|c| c.1.as_array().len()))
            .unwrap_or(0);
        if num.iter().any(|c| c.1.len() != rows)
            || cat.iter().any(|c| c.1.len() != rows)
            || texts.iter().any(|c| c.1.len() != rows)
            || numcats.iter().any(|c| c.values.len() != rows)
            || objects.iter().any(|c| c.1.as_array().len() != rows)
        {
            return Err(PyValueError::new_err("columns differ in length"));
        }
        let window = {
            let mut w = compiled.empty_window(start_unix_nano, width_nano);
            let width = num.len() + cat.len() + texts.len() + numcats.len();
            let row_bytes = (num.len() + numcats.len()) * 8 + cat.len() * 4 + texts.len() * 16;
            let tile = (TILE_BYTES / row_bytes.max(1)).clamp(256, 1 << 17);
            let threads = std::thread::available_parallelism()
                .map_or(1, std::num::NonZero::get)
                .min(rows.div_ceil(tile).max(1));
            let per = rows.div_ceil(threads);
            let (num, cat, texts, numcats, w_ref) = (&num, &cat, &texts, &numcats, &w);
            let compiled = &compiled;
            let cols: Vec<usize> = num
                .iter()
                .map(|c| c.0)
                .chain(cat.iter().map(|c| c.0))
                .chain(texts.iter().map(|c| c.0))
                .chain(numcats.iter().map(|c| c.col))
                .collect();
            let cols_ref = &cols;
            let work = move |range: Range<usize>| -> Vec<proto::ColumnProfile> {
                let mut out: Vec<proto::ColumnProfile> =
                    cols_ref.iter().map(|&c| w_ref.columns[c].clone()).collect();
                let base = num.len() + cat.len();
                let mut caches: Vec<FxHashMap<u64, usize>> =
                    numcats.iter().map(|_| FxHashMap::default()).collect();
                let mut nears: Vec<Near<'_>> = texts.iter().map(|_| Near::new()).collect();
                // Strided columns (a row-major matrix) are gathered row by
                // row into a column-major tile first: memory is then read in
                // order, and each column's kernel runs on a contiguous slice.
                let views: Vec<&NumView<'_>> = num
                    .iter()
                    .map(|c| &c.1)
                    .chain(numcats.iter().map(|c| &c.values))
                    .collect();
                let strided: Vec<usize> = (0..views.len())
                    .filter(|&k| !views[k].is_contiguous())
                    .collect();
                let mut scratch = vec![0.0f64; strided.len() * tile];
                // Typed once, so the per-value loop has no dispatch.
                let mut f64s: Vec<(usize, ArrayView1<'_, f64>)> = Vec::new();
                let mut f32s: Vec<(usize, ArrayView1<'_, f32>)> = Vec::new();
                for (slot, &k) in strided.iter().enumerate() {
                    match *views[k] {
                        NumView::F64(a) => f64s.push((slot * tile, a)),
                        NumView::F32(a) => f32s.push((slot * tile, a)),
                    }
                }
                let mut r = range.start;
                while r < range.end {
                    let t = r..(r + tile).min(range.end);
                    let len = t.len();
                    for (j, row) in t.clone().enumerate() {
                        for (at, a) in &f64s {
                            // SAFETY: `row` is below the view's length (the
                            // tile lies within `range`, within `rows`, the
                            // length of every column, checked above).
                            scratch[at + j] = unsafe { *a.uget(row) };
                        }
                        for (at, a) in &f32s {
                            // SAFETY: as above.
                            scratch[at + j] = f64::from(unsafe { *a.uget(row) });
                        }
                    }
                    let mut next = 0;
                    for (k, (_, values, binner)) in num.iter().enumerate() {
                        if strided.get(next) == Some(&k) {
                            let col = &scratch[next * tile..next * tile + len];
                            profile::add_numeric_slice(&mut out[k], binner, col);
                            next += 1;
                        } else {
                            values.add(&mut out[k], binner, t.clone());
                        }
                    }
                    for (k, (_, codes, buckets)) in cat.iter().enumerate() {
                        codes.add(&mut out[num.len() + k], buckets, t.clone());
                    }
                    for (k, (col, values, buckets, _)) in texts.iter().enumerate() {
                        let miss = |v: &[u8]| compiled.miss_bucket_of(*col, v);
                        values.add(&mut out[base + k], buckets, &mut nears[k], &miss, t.clone());
                    }
                    for (k, values) in numcats.iter().enumerate() {
                        let at = base + texts.len() + k;
                        if strided.get(next) == Some(&(num.len() + k)) {
                            let col = &scratch[next * tile..next * tile + len];
                            let cache = &mut caches[k];
                            values.add_values(&mut out[at], compiled, cache, col.iter().copied());
                            next += 1;
                        } else {
                            values.add(&mut out[at], compiled, &mut caches[k], t.clone());
                        }
                    }
                    r = t.end;
                }
                out
            };
            let mut parts: Vec<Vec<proto::ColumnProfile>> = Vec::with_capacity(threads);
            // Columns of Python strings are read here, with the GIL, while
            // the threads profile the others: `None` where one holds
            // anything else (Arrow spells those).
            let mut encoded: PyResult<Option<Vec<(usize, proto::ColumnProfile)>>> =
                Ok(Some(vec![]));
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let range = (t * per).min(rows)..((t + 1) * per).min(rows);
                        sc.spawn(move || work(range))
                    })
                    .collect();
                encoded = profile_objects(py, compiled, &objects, w_ref);
                py.detach(|| {
                    for h in handles {
                        // A worker's panic must not pass for a column
                        // without values: carry it on, for `guard` to report.
                        match h.join() {
                            Ok(done) => parts.push(done),
                            Err(payload) => std::panic::resume_unwind(payload),
                        }
                    }
                });
            });
            let Some(encoded) = encoded? else {
                return Ok(None);
            };
            debug_assert_eq!(cols.len(), width);
            for part in &parts {
                for (k, &c) in cols.iter().enumerate() {
                    profile::merge_column(&mut w.columns[c], &part[k]);
                }
            }
            for (c, p) in &encoded {
                profile::merge_column(&mut w.columns[*c], p);
            }
            w.records = rows as u64;
            w
        };
        Ok(Some(PyBytes::new(py, &window.encode_to_vec())))
    })
}

/// Profiles columns of Python objects (strings and missing values): each
/// dictionary-encoded by [`encode_objects`] and its codes counted. `None`
/// where a column holds anything else.
fn profile_objects(
    py: Python<'_>,
    compiled: &profile::Compiled,
    objects: &[(usize, PyReadonlyArray1<'_, Py<PyAny>>)],
    w: &proto::WindowProfile,
) -> PyResult<Option<Vec<(usize, proto::ColumnProfile)>>> {
    let mut out = Vec::with_capacity(objects.len());
    for (c, values) in objects {
        let Some((codes, dictionary)) = encode_objects(py, values.as_array(), false)? else {
            return Ok(None);
        };
        let buckets: Vec<usize> = dictionary.iter().map(|v| compiled.bucket(*c, v)).collect();
        let mut p = w.columns[*c].clone();
        CodeView::I32(ArrayView1::from(&codes[..])).add(&mut p, &buckets, 0..codes.len());
        out.push((*c, p));
    }
    Ok(Some(out))
}
