//! Names of the export's objects, and what recovery removes.
//!
//! ```text
//! <root>/event_date=YYYY-MM-DD/part-<partition>-<first:020>-<last:020>.parquet
//! <root>/_progress/partition-<partition>.json
//! ```
//!
//! Paths are relative to the root, `/`-separated. A file being written
//! has a temporary name in the same folder: a leading `.` and a trailing
//! [`TEMP_SUFFIX`], which readers (`*.parquet` globs, pyarrow, Spark, which
//! skip names starting with `.` or `_`) never pick up.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Folder of the progress markers.
pub const PROGRESS_DIR: &str = "_progress";
/// Suffix of a file being written.
pub const TEMP_SUFFIX: &str = ".tmp";
/// Version of [`Marker`].
pub const MARKER_VERSION: u32 = 1;

/// A data file's identity: the batch that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataFile {
    pub date: NaiveDate,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

impl DataFile {
    pub fn path(&self) -> String {
        format!(
            "event_date={}/part-{}-{:020}-{:020}.parquet",
            self.date.format("%Y-%m-%d"),
            self.partition,
            self.first_offset,
            self.last_offset
        )
    }

    /// The inverse of [`path`](Self::path); None for any other name.
    pub fn parse(path: &str) -> Option<DataFile> {
        let (folder, name) = path.rsplit_once('/')?;
        let date = folder.rsplit('/').next()?.strip_prefix("event_date=")?;
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
        let mut parts = rest.split('-');
        let partition = parts.next()?.parse().ok()?;
        let first_offset = parts.next()?.parse().ok()?;
        let last_offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        let file = DataFile {
            date,
            partition,
            first_offset,
            last_offset,
        };
        // Only the canonical spelling (zero padded) is ours.
        (file.path() == path).then_some(file)
    }
}

/// The progress marker of one input partition: every record up to and
/// including `last_offset` is in the export's data files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    pub last_offset: i64,
}

pub fn marker_path(partition: i32) -> String {
    format!("{PROGRESS_DIR}/partition-{partition}.json")
}

/// The partition a marker path is for.
pub fn parse_marker_path(path: &str) -> Option<i32> {
    let p: i32 = path
        .strip_prefix(PROGRESS_DIR)?
        .strip_prefix("/partition-")?
        .strip_suffix(".json")?
        .parse()
        .ok()?;
    (marker_path(p) == path).then_some(p)
}

/// The temporary name `path` is written under before it is renamed.
pub fn temp_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((folder, name)) => format!("{folder}/.{name}{TEMP_SUFFIX}"),
        None => format!(".{path}{TEMP_SUFFIX}"),
    }
}

pub fn is_temp(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// What a restart deletes, given every path under the root and the last
/// exported offset of each partition (its marker): leftover temporary
/// files, and every data file of a batch that has no marker yet (its first
/// offset is beyond its partition's marker, or the partition has none).
/// Such a batch crashed before its marker was written; it is read and
/// written again, perhaps cut at other offsets.
pub fn leftovers(paths: &[String], markers: &BTreeMap<i32, i64>) -> Vec<String> {
    paths
        .iter()
        .filter(|path| {
            if is_temp(path) {
                return true;
            }
            match DataFile::parse(path) {
                Some(f) => markers
                    .get(&f.partition)
                    .is_none_or(|last| f.first_offset > *last),
                None => false,
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(date: &str, partition: i32, first: i64, last: i64) -> DataFile {
        DataFile {
            date: NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap(),
            partition,
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn data_file_names_are_deterministic_and_parse_back() {
        let f = file("2026-01-31", 4, 100, 1_999);
        assert_eq!(
            f.path(),
            "event_date=2026-01-31/part-4-00000000000000000100-00000000000000001999.parquet"
        );
        assert_eq!(DataFile::parse(&f.path()), Some(f));
        assert_eq!(
            DataFile::parse("event_date=2026-01-31/part-4-100-1999.parquet"),
            None
        );
        assert_eq!(DataFile::parse(&temp_path(&f.path())), None);
        assert_eq!(DataFile::parse("event_date=2026-01-31/other.parquet"), None);
        assert_eq!(parse_marker_path(&marker_path(7)), Some(7));
        assert_eq!(marker_path(7), "_progress/partition-7.json");
        assert_eq!(
            temp_path(&f.path()),
            "event_date=2026-01-31/.part-4-00000000000000000100-00000000000000001999.parquet.tmp"
        );
        assert!(is_temp(&temp_path(&marker_path(2))));
        assert!(!is_temp(&f.path()));
    }

    #[test]
    fn a_crashed_batch_and_temp_files_are_removed_committed_batches_stay() {
        let done_p0 = file("2026-01-01", 0, 0, 99);
        let done_p0_other_day = file("2026-01-02", 0, 0, 99);
        let crashed_p0 = file("2026-01-02", 0, 100, 180);
        let done_p1 = file("2026-01-01", 1, 0, 49);
        let unmarked_p2 = file("2026-01-01", 2, 0, 10);
        let temp = temp_path(&file("2026-01-03", 0, 100, 180).path());
        let temp_marker = temp_path(&marker_path(0));
        let paths: Vec<String> = vec![
            done_p0.path(),
            done_p0_other_day.path(),
            crashed_p0.path(),
            done_p1.path(),
            unmarked_p2.path(),
            temp.clone(),
            temp_marker.clone(),
            marker_path(0),
            marker_path(1),
            "README.txt".to_string(),
        ];
        let markers = BTreeMap::from([(0, 99), (1, 49)]);
        let mut gone = leftovers(&paths, &markers);
        gone.sort();
        let mut want = vec![crashed_p0.path(), unmarked_p2.path(), temp, temp_marker];
        want.sort();
        assert_eq!(gone, want);
    }
}
