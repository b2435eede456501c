//! Categorical columns of text as Arrow lays them out (`string`,
//! `large_string`, `string_view`), checked before they are read and looked
//! up by bytes.

use std::ops::Range;

use modeltap_core::near::Near;
use modeltap_core::profile;
use modeltap_core::proto;
use numpy::PyReadonlyArray1;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use rustc_hash::FxHashMap;

/// Arrow `string` / `large_string` offsets.
enum Offsets<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

/// A categorical column of text as Arrow lays it out (a pandas Arrow-backed
/// string column, an Arrow or polars one): offsets (rows + 1), the UTF-8
/// bytes, and the validity bitmap with its bit offset (`None`: no nulls).
/// Looked up by bytes in the threads, no string built per row.
pub(super) struct TextArray<'py> {
    layout: TextBuffers<'py>,
    valid: Option<(PyReadonlyArray1<'py, u8>, usize)>,
}

/// How a [`TextArray`] holds its values.
enum TextBuffers<'py> {
    /// `string` / `large_string`: offsets (rows + 1) into one run of bytes.
    Offsets {
        offsets: Offsets<'py>,
        data: PyReadonlyArray1<'py, u8>,
    },
    /// `string_view` (polars' strings): 16 bytes a row, the length (a
    /// little-endian i32) then the value itself when it is at most 12
    /// bytes, else its first 4 bytes, a buffer index and an offset.
    Views {
        views: PyReadonlyArray1<'py, u8>,
        buffers: Vec<PyReadonlyArray1<'py, u8>>,
    },
}

/// `(column_index, views (16 bytes a row), data buffers, validity bitmap,
/// bit offset)`.
pub(super) type ViewArg<'py> = (
    usize,
    PyReadonlyArray1<'py, u8>,
    Vec<PyReadonlyArray1<'py, u8>>,
    Option<PyReadonlyArray1<'py, u8>>,
    usize,
);

/// Bytes of one `string_view` entry.
const VIEW_BYTES: usize = 16;

/// Longest value a view holds inline.
const VIEW_INLINE: usize = 12;

/// `(column_index, offsets, bytes, validity bitmap, bit offset)`.
pub(super) type TextArg<'py> = (
    usize,
    Bound<'py, PyAny>,
    PyReadonlyArray1<'py, u8>,
    Option<PyReadonlyArray1<'py, u8>>,
    usize,
);

impl<'py> TextArray<'py> {
    pub(super) fn read(arg: &TextArg<'py>) -> PyResult<Self> {
        let (_, offsets, data, valid, bit_offset) = arg;
        let offsets = if let Ok(a) = offsets.extract::<PyReadonlyArray1<'py, i32>>() {
            Offsets::I32(a)
        } else if let Ok(a) = offsets.extract::<PyReadonlyArray1<'py, i64>>() {
            Offsets::I64(a)
        } else {
            return Err(PyTypeError::new_err(
                "text offsets must be a 1-D int32 or int64 array",
            ));
        };
        Ok(Self {
            layout: TextBuffers::Offsets {
                offsets,
                data: data.clone(),
            },
            valid: valid.clone().map(|v| (v, *bit_offset)),
        })
    }

    pub(super) fn read_views(arg: &ViewArg<'py>) -> Self {
        let (_, views, buffers, valid, bit_offset) = arg;
        Self {
            layout: TextBuffers::Views {
                views: views.clone(),
                buffers: buffers.clone(),
            },
            valid: valid.clone().map(|v| (v, *bit_offset)),
        }
    }

    /// Checks the layout (a hostile one is refused, never read past).
    pub(super) fn view(&self) -> PyResult<TextView<'_>> {
        let bad = |what: &str| PyValueError::new_err(format!("text column: {what}"));
        let (layout, rows) = match &self.layout {
            TextBuffers::Offsets { offsets, data } => {
                let data = data.as_slice().map_err(|_| bad("bytes not contiguous"))?;
                let offsets: Vec<usize> = match offsets {
                    Offsets::I32(a) => a
                        .as_array()
                        .iter()
                        .map(|&o| usize::try_from(o).map_err(|_| bad("negative offset")))
                        .collect::<PyResult<_>>()?,
                    Offsets::I64(a) => a
                        .as_array()
                        .iter()
                        .map(|&o| usize::try_from(o).map_err(|_| bad("negative offset")))
                        .collect::<PyResult<_>>()?,
                };
                let Some(&last) = offsets.last() else {
                    return Err(bad("no offsets"));
                };
                if offsets.windows(2).any(|w| w[0] > w[1]) || last > data.len() {
                    return Err(bad("offsets out of order or past the bytes"));
                }
                let rows = offsets.len() - 1;
                (TextLayout::Offsets { offsets, data }, rows)
            }
            TextBuffers::Views { views, buffers } => {
                let views = views.as_slice().map_err(|_| bad("views not contiguous"))?;
                let buffers: Vec<&[u8]> = buffers
                    .iter()
                    .map(|b| b.as_slice().map_err(|_| bad("buffer not contiguous")))
                    .collect::<PyResult<_>>()?;
                if views.len() % VIEW_BYTES != 0 {
                    return Err(bad("views not a whole number of 16-byte entries"));
                }
                (
                    TextLayout::Views { views, buffers },
                    views.len() / VIEW_BYTES,
                )
            }
        };
        let valid = match &self.valid {
            None => None,
            Some((v, bit)) => {
                let bits = v.as_slice().map_err(|_| bad("bitmap not contiguous"))?;
                if bit
                    .checked_add(rows)
                    .is_none_or(|end| end.div_ceil(8) > bits.len())
                {
                    return Err(bad("validity bitmap too short"));
                }
                Some((bits, *bit))
            }
        };
        let view = TextView {
            layout,
            rows,
            valid,
        };
        if let TextLayout::Views { views, buffers } = &view.layout {
            // Every valid row's view lies within its buffer (null rows'
            // views are never read).
            for r in 0..rows {
                if !view.is_valid(r) {
                    continue;
                }
                let e = &views[r * VIEW_BYTES..(r + 1) * VIEW_BYTES];
                let len = usize::try_from(view_field(e, 0)).map_err(|_| bad("negative length"))?;
                if len <= VIEW_INLINE {
                    continue;
                }
                let at = (
                    usize::try_from(view_field(e, 8)),
                    usize::try_from(view_field(e, 12)),
                );
                let (Ok(buffer), Ok(offset)) = at else {
                    return Err(bad("negative buffer index or offset"));
                };
                if buffers
                    .get(buffer)
                    .is_none_or(|b| offset.checked_add(len).is_none_or(|end| end > b.len()))
                {
                    return Err(bad("a view past its buffer"));
                }
            }
        }
        Ok(view)
    }
}

/// The little-endian i32 at `at` of a `string_view` entry.
#[inline]
fn view_field(entry: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&entry[at..at + 4]);
    i32::from_le_bytes(b)
}

/// A text column to profile: its index, its layout, its buckets by bytes
/// and the bucket of values the reference does not know.
pub(super) type TextJob<'a> = (usize, TextView<'a>, FxHashMap<&'a [u8], usize>, usize);

/// A checked [`TextArray`].
pub(super) struct TextView<'a> {
    layout: TextLayout<'a>,
    rows: usize,
    valid: Option<(&'a [u8], usize)>,
}

enum TextLayout<'a> {
    Offsets {
        offsets: Vec<usize>,
        data: &'a [u8],
    },
    Views {
        views: &'a [u8],
        buffers: Vec<&'a [u8]>,
    },
}

impl<'a> TextView<'a> {
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    #[inline]
    fn is_valid(&self, r: usize) -> bool {
        self.valid.is_none_or(|(bits, bit)| {
            let i = bit + r;
            bits[i / 8] & (1 << (i % 8)) != 0
        })
    }

    /// The bytes of (valid) row `r`.
    #[inline]
    fn value(&self, r: usize) -> &'a [u8] {
        match &self.layout {
            TextLayout::Offsets { offsets, data } => &data[offsets[r]..offsets[r + 1]],
            TextLayout::Views { views, buffers } => {
                let e = &views[r * VIEW_BYTES..(r + 1) * VIEW_BYTES];
                // Checked in `view`: not negative, and within its buffer.
                let len = view_field(e, 0).unsigned_abs() as usize;
                if len <= VIEW_INLINE {
                    &e[4..4 + len]
                } else {
                    let buffer = view_field(e, 8).unsigned_abs() as usize;
                    let offset = view_field(e, 12).unsigned_abs() as usize;
                    &buffers[buffer][offset..offset + len]
                }
            }
        }
    }

    /// Adds rows `rows` to `p`: each value's bucket found by its bytes in
    /// `near`, else in `buckets`, `miss` for a value the reference does not
    /// know.
    pub(super) fn add(
        &self,
        p: &mut proto::ColumnProfile,
        buckets: &FxHashMap<&[u8], usize>,
        near: &mut Near<'a>,
        miss: &dyn Fn(&[u8]) -> usize,
        rows: Range<usize>,
    ) {
        for r in rows {
            if !self.is_valid(r) {
                profile::add_category(p, None);
                continue;
            }
            let v = self.value(r);
            let hash = Near::hash(v);
            if let Some(bucket) = near.get(hash, v) {
                profile::add_category(p, Some(bucket));
                continue;
            }
            let bucket = if v.len() > crate::recorder::MAX_VALUE_BYTES {
                // Cut as agents and references cut it.
                let cut = crate::recorder::clip(
                    String::from_utf8_lossy(v).into_owned(),
                    crate::recorder::MAX_VALUE_BYTES,
                );
                buckets
                    .get(cut.as_bytes())
                    .copied()
                    .unwrap_or_else(|| miss(cut.as_bytes()))
            } else {
                buckets.get(v).copied().unwrap_or_else(|| miss(v))
            };
            near.put(hash, v, bucket);
            profile::add_category(p, Some(bucket));
        }
    }
}
