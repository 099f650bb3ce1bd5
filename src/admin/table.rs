//! A result set as the admin console sends it: RowDescription, DataRows, CommandComplete.

use crate::protocol::backend;
use bytes::{BufMut, BytesMut};

/// A column's type as clients see it: text, or a 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
}

pub struct Table {
    columns: Vec<(&'static str, Kind)>,
    rows: Vec<Vec<Option<String>>>,
}

/// One value of a row.
pub enum Cell {
    Text(String),
    Int(i64),
    Null,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<&String> for Cell {
    fn from(s: &String) -> Cell {
        Cell::Text(s.clone())
    }
}

macro_rules! int_cell {
    ($($t:ty),*) => {$(
        impl From<$t> for Cell {
            fn from(n: $t) -> Cell {
                Cell::Int(n as i64)
            }
        }
    )*};
}
int_cell!(i32, i64, u16, u32, u64, usize);

impl From<bool> for Cell {
    fn from(b: bool) -> Cell {
        Cell::Int(b as i64)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Cell {
        v.map_or(Cell::Null, Into::into)
    }
}

impl Table {
    pub fn new(columns: &[(&'static str, Kind)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// A table of text columns.
    pub fn text(names: &[&'static str]) -> Table {
        Table::new(&names.iter().map(|n| (*n, Kind::Text)).collect::<Vec<_>>())
    }

    pub fn row(&mut self, cells: Vec<Cell>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(
            cells
                .into_iter()
                .map(|c| match c {
                    Cell::Text(s) => Some(s),
                    Cell::Int(n) => Some(n.to_string()),
                    Cell::Null => None,
                })
                .collect(),
        );
    }

    /// Writes the result set, ending with CommandComplete `tag`.
    pub fn write(&self, out: &mut BytesMut, tag: &str) {
        // RowDescription by hand: integer columns are typed int8 so that drivers read numbers.
        let at = out.len();
        out.put_u8(b'T');
        out.put_i32(0);
        out.put_i16(self.columns.len() as i16);
        for (name, kind) in &self.columns {
            out.put_slice(name.as_bytes());
            out.put_u8(0);
            out.put_i32(0);
            out.put_i16(0);
            let (oid, size) = match kind {
                Kind::Text => (25, -1),
                Kind::Int => (20, 8),
            };
            out.put_i32(oid);
            out.put_i16(size);
            out.put_i32(-1);
            out.put_i16(0);
        }
        let len = (out.len() - at - 1) as i32;
        out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
        for row in &self.rows {
            let cells: Vec<Option<&str>> = row.iter().map(|c| c.as_deref()).collect();
            backend::data_row(out, &cells);
        }
        backend::command_complete(out, tag);
    }
}
