//! Settings of `meterline export` (section `[export]`): where the Parquet
//! event history goes, how big its batches are, and the fixed scales of its
//! decimal columns.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default of `export.batch_events`: events per partition in one batch.
pub const DEFAULT_EXPORT_BATCH_EVENTS: usize = 50_000;
/// Default of `export.batch_max_ms`: the oldest event of a batch waits at
/// most this long before the batch is written.
pub const DEFAULT_EXPORT_BATCH_MAX_MS: u64 = 60_000;
/// Default of `export.amount_scale`: fractional digits of the amount column.
pub const DEFAULT_EXPORT_AMOUNT_SCALE: u32 = 20;
/// Default of `export.quantity_scale`: fractional digits of the quantity columns.
pub const DEFAULT_EXPORT_QUANTITY_SCALE: u32 = 18;
/// Precision of every decimal column (a 16-byte two's complement holds 38
/// digits).
pub const EXPORT_DECIMAL_PRECISION: u32 = 38;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Local directory of the export (relative to the config file), when
    /// neither `--dir` nor `--url` is given.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Object store location (`s3://bucket/prefix`), when neither `--dir`
    /// nor `--url` is given; beats `dir`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default = "batch_events")]
    pub batch_events: usize,
    #[serde(default = "batch_max_ms")]
    pub batch_max_ms: u64,
    /// Scale of `marginal_amount` (DECIMAL(38, amount_scale)), 0..=38.
    #[serde(default = "amount_scale")]
    pub amount_scale: u32,
    /// Scale of the quantity columns (DECIMAL(38, quantity_scale)), 0..=38.
    #[serde(default = "quantity_scale")]
    pub quantity_scale: u32,
}

fn batch_events() -> usize {
    DEFAULT_EXPORT_BATCH_EVENTS
}
fn batch_max_ms() -> u64 {
    DEFAULT_EXPORT_BATCH_MAX_MS
}
fn amount_scale() -> u32 {
    DEFAULT_EXPORT_AMOUNT_SCALE
}
fn quantity_scale() -> u32 {
    DEFAULT_EXPORT_QUANTITY_SCALE
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            dir: None,
            url: None,
            batch_events: batch_events(),
            batch_max_ms: batch_max_ms(),
            amount_scale: amount_scale(),
            quantity_scale: quantity_scale(),
        }
    }
}

impl ExportConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.batch_events == 0 {
            return Err("export.batch_events must be > 0".into());
        }
        if self.batch_max_ms == 0 {
            return Err("export.batch_max_ms must be > 0".into());
        }
        for (name, scale) in [
            ("amount_scale", self.amount_scale),
            ("quantity_scale", self.quantity_scale),
        ] {
            if scale > EXPORT_DECIMAL_PRECISION {
                return Err(format!(
                    "export.{name} ({scale}) must be at most {EXPORT_DECIMAL_PRECISION}"
                ));
            }
        }
        Ok(())
    }
}
