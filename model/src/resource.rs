//! The resource and scope columns every table shares.

use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, UInt32Array, UInt32Builder};
use prost::Message;

use crate::ModelError;
use crate::attributes::{AttributesBuilder, AttributesReader};
use crate::otlp::common::v1::{EntityRef, InstrumentationScope, KeyValue, any_value::Value};
use crate::otlp::resource::v1::Resource;
use crate::util::{Columns, DictBuilder};

/// Name used when a resource has no `service.name` (the OpenTelemetry SDKs' own default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// `service.name` of a resource, or [`UNKNOWN_SERVICE`].
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or(UNKNOWN_SERVICE)
}

/// The entity refs of a resource, protobuf-encoded as a `Resource` holding only them.
#[derive(Clone, PartialEq, prost::Message)]
struct EntityRefs {
    #[prost(message, repeated, tag = "3")]
    entity_refs: Vec<EntityRef>,
}

#[derive(Default)]
pub(crate) struct ResourceScopeBuilder {
    service_name: DictBuilder,
    attributes: AttributesBuilder,
    dropped: UInt32Builder,
    schema_url: DictBuilder,
    entity_refs: BinaryBuilder,
    scope_name: DictBuilder,
    scope_version: DictBuilder,
    scope_attributes: AttributesBuilder,
    scope_dropped: UInt32Builder,
    scope_schema_url: DictBuilder,
    /// Identity of the origin of the previous row: rows of one resource and scope arrive
    /// together, and their attribute columns are then copied instead of rebuilt.
    last_origin: Option<[usize; 4]>,
    last_entity_refs: Option<Vec<u8>>,
}

/// The resource and scope of the rows being appended.
pub(crate) struct Origin<'a> {
    pub resource: Option<&'a Resource>,
    pub resource_schema_url: &'a str,
    pub scope: Option<&'a InstrumentationScope>,
    pub scope_schema_url: &'a str,
}

impl Origin<'_> {
    pub fn service_name(&self) -> &str {
        service_name(self.resource)
    }
}

static NO_ATTRIBUTES: &[KeyValue] = &[];

impl Origin<'_> {
    fn identity(&self) -> [usize; 4] {
        [
            self.resource
                .map(|r| r as *const Resource as usize)
                .unwrap_or(0),
            self.scope
                .map(|s| s as *const InstrumentationScope as usize)
                .unwrap_or(0),
            self.resource_schema_url.as_ptr() as usize,
            self.scope_schema_url.as_ptr() as usize,
        ]
    }
}

impl ResourceScopeBuilder {
    pub fn append(&mut self, origin: &Origin<'_>) -> Result<(), ModelError> {
        let identity = origin.identity();
        let same = self.last_origin == Some(identity);
        self.last_origin = Some(identity);
        let resource = origin.resource;
        let scope = origin.scope;
        let resource_attrs = resource
            .map(|r| r.attributes.as_slice())
            .unwrap_or(NO_ATTRIBUTES);
        let scope_attrs = scope
            .map(|s| s.attributes.as_slice())
            .unwrap_or(NO_ATTRIBUTES);
        if same {
            self.service_name.repeat_last();
            self.attributes.repeat_last(resource_attrs)?;
            self.schema_url.repeat_last();
            self.scope_name.repeat_last();
            self.scope_version.repeat_last();
            self.scope_attributes.repeat_last(scope_attrs)?;
            self.scope_schema_url.repeat_last();
        } else {
            self.service_name.append_value(origin.service_name())?;
            self.attributes.append(resource_attrs)?;
            self.schema_url.append_value(origin.resource_schema_url)?;
            self.scope_name
                .append_value(scope.map(|s| s.name.as_str()).unwrap_or(""))?;
            self.scope_version
                .append_value(scope.map(|s| s.version.as_str()).unwrap_or(""))?;
            self.scope_attributes.append(scope_attrs)?;
            self.scope_schema_url
                .append_value(origin.scope_schema_url)?;
            self.last_entity_refs = match resource {
                Some(r) if !r.entity_refs.is_empty() => Some(
                    EntityRefs {
                        entity_refs: r.entity_refs.clone(),
                    }
                    .encode_to_vec(),
                ),
                _ => None,
            };
        }
        self.dropped
            .append_value(resource.map(|r| r.dropped_attributes_count).unwrap_or(0));
        match &self.last_entity_refs {
            Some(b) => self.entity_refs.append_value(b),
            None => self.entity_refs.append_null(),
        }
        self.scope_dropped
            .append_value(scope.map(|s| s.dropped_attributes_count).unwrap_or(0));
        Ok(())
    }

    /// Columns in [`crate::schema::resource_scope_fields`] order.
    pub fn finish(&mut self) -> Vec<ArrayRef> {
        self.last_origin = None;
        self.last_entity_refs = None;
        let (attrs, attrs_typed) = self.attributes.finish();
        let (scope_attrs, scope_attrs_typed) = self.scope_attributes.finish();
        vec![
            self.service_name.finish(),
            attrs,
            attrs_typed,
            Arc::new(self.dropped.finish()),
            self.schema_url.finish(),
            Arc::new(self.entity_refs.finish()),
            self.scope_name.finish(),
            self.scope_version.finish(),
            scope_attrs,
            scope_attrs_typed,
            Arc::new(self.scope_dropped.finish()),
            self.scope_schema_url.finish(),
        ]
    }
}

/// The resource and scope of one row, read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowOrigin {
    pub resource: Resource,
    pub resource_schema_url: String,
    pub scope: InstrumentationScope,
    pub scope_schema_url: String,
}

pub(crate) struct ResourceScopeReader<'a> {
    attributes: AttributesReader<'a>,
    dropped: &'a UInt32Array,
    schema_url: crate::util::DictReader<'a>,
    entity_refs: &'a arrow::array::BinaryArray,
    scope_name: crate::util::DictReader<'a>,
    scope_version: crate::util::DictReader<'a>,
    scope_attributes: AttributesReader<'a>,
    scope_dropped: &'a UInt32Array,
    scope_schema_url: crate::util::DictReader<'a>,
}

impl<'a> ResourceScopeReader<'a> {
    pub fn new(cols: &Columns<'a>) -> Result<Self, ModelError> {
        Ok(ResourceScopeReader {
            attributes: AttributesReader::new(
                cols.array("resource_attributes")?.as_ref(),
                cols.array("resource_attributes_typed")?.as_ref(),
                "resource_attributes",
            )?,
            dropped: cols.get("resource_dropped_attributes_count")?,
            schema_url: cols.dict("resource_schema_url")?,
            entity_refs: cols.get("resource_entity_refs")?,
            scope_name: cols.dict("scope_name")?,
            scope_version: cols.dict("scope_version")?,
            scope_attributes: AttributesReader::new(
                cols.array("scope_attributes")?.as_ref(),
                cols.array("scope_attributes_typed")?.as_ref(),
                "scope_attributes",
            )?,
            scope_dropped: cols.get("scope_dropped_attributes_count")?,
            scope_schema_url: cols.dict("scope_schema_url")?,
        })
    }

    pub fn row(&self, i: usize) -> Result<RowOrigin, ModelError> {
        use arrow::array::Array;
        let entity_refs = if self.entity_refs.is_valid(i) {
            EntityRefs::decode(self.entity_refs.value(i))
                .map_err(|e| ModelError::Sidecar {
                    column: "resource_entity_refs".into(),
                    reason: e.to_string(),
                })?
                .entity_refs
        } else {
            Vec::new()
        };
        Ok(RowOrigin {
            resource: Resource {
                attributes: self.attributes.row(i)?,
                dropped_attributes_count: self.dropped.value(i),
                entity_refs,
            },
            resource_schema_url: self.schema_url.value(i).to_string(),
            scope: InstrumentationScope {
                name: self.scope_name.value(i).to_string(),
                version: self.scope_version.value(i).to_string(),
                attributes: self.scope_attributes.row(i)?,
                dropped_attributes_count: self.scope_dropped.value(i),
            },
            scope_schema_url: self.scope_schema_url.value(i).to_string(),
        })
    }
}
