//! One Parquet file of export rows: the schema (a Parquet message type, so
//! no Arrow is compiled in) and the column writer.

use std::sync::Arc;

use chrono::NaiveDate;
use parquet::basic::Compression;
use parquet::data_type::{
    ByteArray, ByteArrayType, DataType, FixedLenByteArray, FixedLenByteArrayType, Int32Type,
    Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rust_decimal::Decimal;

use super::decimal::{self, DECIMAL_BYTES};
use crate::config::EXPORT_DECIMAL_PRECISION;

/// One row: one measure of one rated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The partition folder (UTC date of the event time); not a column.
    pub event_date: NaiveDate,
    pub source: String,
    pub id: String,
    pub customer_id: String,
    pub subscription_id: String,
    pub plan_id: String,
    pub legal_entity: String,
    pub meter: String,
    pub segment_id: String,
    pub segment_key: String,
    pub plan_version: u32,
    pub aggregation: String,
    /// Microseconds since the epoch, UTC.
    pub event_time_us: i64,
    pub time_zone: String,
    /// None when the calendar cannot place the event (see the module docs).
    pub day_window_id: Option<String>,
    pub billing_period_id: Option<String>,
    pub currency: String,
    pub quantity_before: Decimal,
    pub quantity_after: Decimal,
    pub marginal_quantity: Decimal,
    pub marginal_amount: Decimal,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
}

/// The fixed scales of the decimal columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scales {
    pub amount: u32,
    pub quantity: u32,
}

/// What writing a file found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileStats {
    pub rows: usize,
    /// Values written as NULL in their decimal column (kept in `*_text`).
    pub unfit_values: usize,
}

/// One column's values, in row order.
enum Values {
    Text(Vec<ByteArray>),
    OptionalText(Vec<Option<ByteArray>>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Timestamp(Vec<i64>),
    Decimal(Vec<Option<FixedLenByteArray>>, u32),
}

impl Values {
    fn schema_line(&self, name: &str) -> String {
        match self {
            Values::Text(_) => format!("REQUIRED BYTE_ARRAY {name} (STRING);"),
            Values::OptionalText(_) => format!("OPTIONAL BYTE_ARRAY {name} (STRING);"),
            Values::Int32(_) => format!("REQUIRED INT32 {name};"),
            Values::Int64(_) => format!("REQUIRED INT64 {name};"),
            Values::Timestamp(_) => format!("REQUIRED INT64 {name} (TIMESTAMP(MICROS,true));"),
            Values::Decimal(_, scale) => format!(
                "OPTIONAL FIXED_LEN_BYTE_ARRAY ({DECIMAL_BYTES}) {name} (DECIMAL({EXPORT_DECIMAL_PRECISION},{scale}));"
            ),
        }
    }
}

fn text(rows: &[Row], f: impl Fn(&Row) -> &str) -> Values {
    Values::Text(rows.iter().map(|r| ByteArray::from(f(r))).collect())
}

fn optional_text(rows: &[Row], f: impl Fn(&Row) -> Option<&str>) -> Values {
    Values::OptionalText(rows.iter().map(|r| f(r).map(ByteArray::from)).collect())
}

/// The decimal column and its exact text twin.
fn decimal_pair(
    rows: &[Row],
    scale: u32,
    unfit: &mut usize,
    f: impl Fn(&Row) -> Decimal,
) -> (Values, Values) {
    let mut column = Vec::with_capacity(rows.len());
    let mut texts = Vec::with_capacity(rows.len());
    for r in rows {
        let d = f(r);
        let encoded = decimal::encode(d, scale).map(|b| FixedLenByteArray::from(b.to_vec()));
        if encoded.is_none() {
            *unfit += 1;
        }
        column.push(encoded);
        texts.push(ByteArray::from(d.to_string().as_str()));
    }
    (Values::Decimal(column, scale), Values::Text(texts))
}

/// The columns of `rows`, in file order.
fn columns(rows: &[Row], scales: Scales, unfit: &mut usize) -> Vec<(&'static str, Values)> {
    let mut cols = vec![
        ("source", text(rows, |r| &r.source)),
        ("id", text(rows, |r| &r.id)),
        ("customer_id", text(rows, |r| &r.customer_id)),
        ("subscription_id", text(rows, |r| &r.subscription_id)),
        ("plan_id", text(rows, |r| &r.plan_id)),
        (
            "plan_version",
            Values::Int64(rows.iter().map(|r| i64::from(r.plan_version)).collect()),
        ),
        ("legal_entity", text(rows, |r| &r.legal_entity)),
        ("meter", text(rows, |r| &r.meter)),
        ("aggregation", text(rows, |r| &r.aggregation)),
        ("segment_id", text(rows, |r| &r.segment_id)),
        ("segment_key", text(rows, |r| &r.segment_key)),
        (
            "event_time",
            Values::Timestamp(rows.iter().map(|r| r.event_time_us).collect()),
        ),
        ("time_zone", text(rows, |r| &r.time_zone)),
        (
            "day_window_id",
            optional_text(rows, |r| r.day_window_id.as_deref()),
        ),
        (
            "billing_period_id",
            optional_text(rows, |r| r.billing_period_id.as_deref()),
        ),
        ("currency", text(rows, |r| &r.currency)),
    ];
    let quantity = |name_text: [&'static str; 2], f: fn(&Row) -> Decimal, unfit: &mut usize| {
        let (d, t) = decimal_pair(rows, scales.quantity, unfit, f);
        [(name_text[0], d), (name_text[1], t)]
    };
    cols.extend(quantity(
        ["quantity_before", "quantity_before_text"],
        |r| r.quantity_before,
        unfit,
    ));
    cols.extend(quantity(
        ["quantity_after", "quantity_after_text"],
        |r| r.quantity_after,
        unfit,
    ));
    cols.extend(quantity(
        ["marginal_quantity", "marginal_quantity_text"],
        |r| r.marginal_quantity,
        unfit,
    ));
    let (amount, amount_text) = decimal_pair(rows, scales.amount, unfit, |r| r.marginal_amount);
    cols.push(("marginal_amount", amount));
    cols.push(("marginal_amount_text", amount_text));
    cols.push((
        "kafka_partition",
        Values::Int32(rows.iter().map(|r| r.kafka_partition).collect()),
    ));
    cols.push((
        "kafka_offset",
        Values::Int64(rows.iter().map(|r| r.kafka_offset).collect()),
    ));
    cols
}

/// The message type of a file at `scales` (what `parquet-tools schema` shows).
pub fn schema(scales: Scales) -> String {
    let mut unfit = 0;
    message_type(&columns(&[], scales, &mut unfit))
}

fn message_type(cols: &[(&'static str, Values)]) -> String {
    let mut s = String::from("message meterline_rated_measure {\n");
    for (name, values) in cols {
        s.push_str("  ");
        s.push_str(&values.schema_line(name));
        s.push('\n');
    }
    s.push('}');
    s
}

/// Definition levels of an optional column: 1 present, 0 null.
fn levels<T>(values: &[Option<T>]) -> Vec<i16> {
    values.iter().map(|v| i16::from(v.is_some())).collect()
}

fn write_column<T: DataType, W: std::io::Write + Send>(
    rg: &mut parquet::file::writer::SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
    def_levels: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut col = rg
        .next_column()?
        .ok_or_else(|| ParquetError::General("more columns than the schema".into()))?;
    col.typed::<T>().write_batch(values, def_levels, None)?;
    col.close()
}

/// The Parquet bytes of `rows` (one row group, snappy).
pub fn write(rows: &[Row], scales: Scales) -> Result<(Vec<u8>, FileStats), ParquetError> {
    let mut unfit = 0;
    let cols = columns(rows, scales, &mut unfit);
    let schema = Arc::new(parse_message_type(&message_type(&cols))?);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("meterline {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(props))?;
    let mut rg = writer.next_row_group()?;
    for (_, values) in &cols {
        match values {
            Values::Text(v) => write_column::<ByteArrayType, _>(&mut rg, v, None)?,
            Values::OptionalText(v) => {
                let present: Vec<ByteArray> = v.iter().flatten().cloned().collect();
                write_column::<ByteArrayType, _>(&mut rg, &present, Some(&levels(v)))?;
            }
            Values::Int32(v) => write_column::<Int32Type, _>(&mut rg, v, None)?,
            Values::Int64(v) | Values::Timestamp(v) => {
                write_column::<Int64Type, _>(&mut rg, v, None)?
            }
            Values::Decimal(v, _) => {
                let present: Vec<FixedLenByteArray> = v.iter().flatten().cloned().collect();
                write_column::<FixedLenByteArrayType, _>(&mut rg, &present, Some(&levels(v)))?;
            }
        }
    }
    rg.close()?;
    let bytes = writer.into_inner()?;
    Ok((
        bytes,
        FileStats {
            rows: rows.len(),
            unfit_values: unfit,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    use super::*;

    fn row(amount: &str, quantity: &str) -> Row {
        Row {
            event_date: NaiveDate::from_ymd_opt(2026, 1, 10).unwrap(),
            source: "svc/a".into(),
            id: format!("e-{amount}"),
            customer_id: "cust-1".into(),
            subscription_id: "sub-1".into(),
            plan_id: "pro".into(),
            legal_entity: "ml-us".into(),
            meter: "tokens".into(),
            segment_id: "ab".repeat(32),
            segment_key: "[\"sub-1\"]".into(),
            plan_version: 2,
            aggregation: "SUM".into(),
            event_time_us: 1_768_000_000_000_000,
            time_zone: "UTC".into(),
            day_window_id: Some("2026-01-10".into()),
            billing_period_id: None,
            currency: "USD".into(),
            quantity_before: Decimal::ZERO,
            quantity_after: Decimal::from_str(quantity).unwrap(),
            marginal_quantity: Decimal::from_str(quantity).unwrap(),
            marginal_amount: Decimal::from_str(amount).unwrap(),
            kafka_partition: 1,
            kafka_offset: 42,
        }
    }

    fn field<'a>(r: &'a parquet::record::Row, name: &str) -> &'a Field {
        r.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    #[test]
    fn rows_read_back_exact_and_a_value_that_does_not_fit_is_null_with_its_text() {
        let scales = Scales {
            amount: 20,
            quantity: 18,
        };
        let tiny = "-0.0000000000000000000000000001";
        let rows = vec![
            row("5.25", "1500"),
            row("-0.00000000000000000001", "0.5"),
            row(tiny, "1"),
        ];
        let (bytes, stats) = write(&rows, scales).unwrap();
        assert_eq!(
            stats,
            FileStats {
                rows: 3,
                unfit_values: 1
            }
        );
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let reader = SerializedFileReader::new(f).unwrap();
        let descr = reader.metadata().file_metadata().schema_descr_ptr();
        let amount = descr
            .columns()
            .iter()
            .find(|c| c.name() == "marginal_amount")
            .unwrap();
        assert_eq!(
            amount.physical_type(),
            parquet::basic::Type::FIXED_LEN_BYTE_ARRAY
        );
        assert_eq!((amount.type_precision(), amount.type_scale()), (38, 20));
        let read: Vec<parquet::record::Row> = reader
            .get_row_iter(None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read.len(), 3);
        let amount_of = |r: &parquet::record::Row| match field(r, "marginal_amount") {
            Field::Decimal(d) => {
                let b: [u8; 16] = d.data().try_into().unwrap();
                Some(decimal::decode(b, 20).unwrap())
            }
            Field::Null => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            amount_of(&read[0]),
            Some(Decimal::from_str("5.25").unwrap())
        );
        assert_eq!(
            amount_of(&read[1]),
            Some(Decimal::from_str("-0.00000000000000000001").unwrap())
        );
        assert_eq!(amount_of(&read[2]), None);
        assert_eq!(
            field(&read[2], "marginal_amount_text"),
            &Field::Str(tiny.into())
        );
        assert_eq!(field(&read[0], "billing_period_id"), &Field::Null);
        assert_eq!(
            field(&read[0], "day_window_id"),
            &Field::Str("2026-01-10".into())
        );
        assert_eq!(field(&read[0], "kafka_offset"), &Field::Long(42));
        assert!(
            schema(scales).contains("FIXED_LEN_BYTE_ARRAY (16) quantity_after (DECIMAL(38,18))")
        );
    }
}
