//! The Confluent-compatible schema registry: registering the Avro schemas of
//! `schemas/` and decoding Avro records in the Confluent wire format.
//!
//! Both use `schema_registry_converter`'s blocking client; callers on the async
//! executor must go through `spawn_blocking` (reqwest's blocking client panics
//! inside a runtime).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use schema_registry_converter::avro_common::AvroSchema;

use schema_registry_converter::blocking::avro::AvroDecoder as SrAvroDecoder;
use schema_registry_converter::blocking::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::config::{Config, RegistryConfig};
use crate::ingest::decode::{AvroDecodeError, AvroDecoder, WriterSchema};

/// How long one registry HTTP call may take.
pub const REGISTRY_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry at {url}: {message}")]
    Call { url: String, message: String },
    #[error("schema file {path}: {message}")]
    File { path: String, message: String },
}

pub fn settings(reg: &RegistryConfig) -> Result<SrSettings, RegistryError> {
    let mut b = SrSettings::new_builder(reg.url.clone());
    b.set_timeout(Duration::from_millis(REGISTRY_TIMEOUT_MS));
    if let Some(user) = &reg.username {
        b.set_basic_authorization(user, reg.password.as_deref());
    }
    b.build().map_err(|e| RegistryError::Call {
        url: reg.url.clone(),
        message: describe(&e),
    })
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(c) => format!("{}: {}", e.error, c),
        None => e.error.clone(),
    }
}

/// Registers every `schemas/<subject>.avsc` under `<namespace><subject>`;
/// returns "subject -> id" lines. Registering an unchanged schema again
/// returns the same id, so this is idempotent.
pub fn register_schemas(
    config: &Config,
    reg: &RegistryConfig,
) -> Result<Vec<String>, RegistryError> {
    let sr = settings(reg)?;
    let dir = config.resolve(&config.topology.schemas_dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| RegistryError::File {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "avsc"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let (subject, id) = register_file(config, &sr, reg, &path)?;
        out.push(format!("{subject} -> id {id}"));
    }
    Ok(out)
}

fn register_file(
    config: &Config,
    sr: &SrSettings,
    reg: &RegistryConfig,
    path: &Path,
) -> Result<(String, u32), RegistryError> {
    let file_err = |message: String| RegistryError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    // Parse locally first: a broken schema is named by its file, not by a 422.
    apache_avro::Schema::parse_str(&text).map_err(|e| file_err(e.to_string()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| file_err("file name is not UTF-8".into()))?;
    let subject = format!("{}{}", config.topology.namespace, stem);
    let schema = SuppliedSchema::new(None, SchemaType::Avro, text);
    let registered = post_schema(sr, subject.clone(), schema).map_err(|e| RegistryError::Call {
        url: reg.url.clone(),
        message: format!("registering {subject}: {}", describe(&e)),
    })?;
    Ok((subject, registered.id))
}

/// Decodes Confluent wire-format Avro through the registry (schemas cached).
pub struct RegistryAvroDecoder {
    inner: SrAvroDecoder,
}

impl RegistryAvroDecoder {
    pub fn new(reg: &RegistryConfig) -> Result<Self, RegistryError> {
        Ok(RegistryAvroDecoder {
            inner: SrAvroDecoder::new(settings(reg)?),
        })
    }
}

/// The registry's cached writer schema, handed to the Avro -> JSON conversion
/// (decimal logical types need its scale).
struct RegistrySchema(Arc<AvroSchema>);

impl WriterSchema for RegistrySchema {
    fn avro_schema(&self) -> &apache_avro::Schema {
        &self.0.parsed
    }
}

impl RegistryAvroDecoder {
    fn classify(&self, e: SRCError) -> AvroDecodeError {
        let msg = describe(&e);
        if e.retriable {
            // The decoder caches failures; a registry outage must not stick
            // once the registry is back.
            self.inner.remove_errors_from_cache();
            AvroDecodeError::Unavailable(msg)
        } else if msg.contains("404") || msg.to_ascii_lowercase().contains("not found") {
            AvroDecodeError::SchemaNotFound(msg)
        } else {
            AvroDecodeError::Malformed(msg)
        }
    }
}

impl AvroDecoder for RegistryAvroDecoder {
    fn decode(&self, wire: &[u8]) -> Result<apache_avro::types::Value, AvroDecodeError> {
        self.decode_with_schema(wire).map(|(v, _)| v)
    }

    fn decode_with_schema(
        &self,
        wire: &[u8],
    ) -> Result<(apache_avro::types::Value, Option<Arc<dyn WriterSchema>>), AvroDecodeError> {
        match self.inner.decode_with_schema(Some(wire)) {
            Ok(Some(r)) => Ok((
                r.value,
                Some(Arc::new(RegistrySchema(r.schema)) as Arc<dyn WriterSchema>),
            )),
            Ok(None) => Err(AvroDecodeError::Malformed("empty value".into())),
            Err(e) => Err(self.classify(e)),
        }
    }
}
