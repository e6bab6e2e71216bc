//! The tantivy index of a segment.
//!
//! One tantivy document per *granule* (a run of `granule_rows` consecutive rows of the sorted
//! segment), holding the union of its rows' terms: trace ids, service, span/metric name, status
//! or severity, `key=value` attribute terms (span, log or point attributes and resource
//! attributes) and the words of log bodies, span event names and status messages. A search
//! returns granules, which become a row selection for the Parquet reader. Since a granule is a
//! union, a hit means "some row here may match": callers always re-check rows exactly (the
//! query layer's filters, [`TextQuery::matches`]).
//!
//! Indexes are written once per segment into a temporary directory and stored as one object,
//! the *bundle*: the index files concatenated, then a JSON table of contents, its length
//! (u64 LE) and the magic `OXIDX001`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, ListArray, MapArray, StringArray, StructArray,
};
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use oxeye_model::Signal;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    Directory, DirectoryLock, FileHandle, Lock, OwnedBytes, WatchCallback, WatchHandle, WritePtr,
};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::query_grammar::{Delimiter, Occur as UserOccur, UserInputAst, UserInputLeaf};
use tantivy::schema::{FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{
    DocId, Index, IndexReader, ReloadPolicy, Score, SegmentOrdinal, SegmentReader, TantivyDocument,
    Term,
};

use crate::StoreError;

const BUNDLE_MAGIC: &[u8; 8] = b"OXIDX001";
/// Longest term kept; longer values are indexed (and looked up) by their prefix.
const MAX_TERM_BYTES: usize = 200;
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// Field handles of the index schema (the same for every signal).
#[derive(Clone, Copy)]
struct Fields {
    granule: Field,
    trace_id: Field,
    service: Field,
    name: Field,
    status: Field,
    attr: Field,
    text: Field,
    series: Field,
}

/// Separates the parts of a `series` term.
pub const SERIES_SEPARATOR: char = '\u{1f}';

/// Indexed, never stored or scored: oxeye only asks which documents hold a term, so there are
/// no fieldnorms, frequencies or positions to keep.
fn raw_term_field() -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    )
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Read through its fast column only; indexing it would add a term per document.
    let granule = b.add_u64_field("granule", FAST);
    let trace_id = b.add_text_field("trace_id", raw_term_field());
    let service = b.add_text_field("service", raw_term_field());
    let name = b.add_text_field("name", raw_term_field());
    let status = b.add_text_field("status", raw_term_field());
    let attr = b.add_text_field("attr", raw_term_field());
    // What the catalog APIs list: `service␟kind␟span name` for spans, `service␟metric name`
    // for metrics, `service` for logs.
    let series = b.add_text_field("series", raw_term_field());
    let text = b.add_text_field(
        "text",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false),
        ),
    );
    (
        b.build(),
        Fields {
            granule,
            trace_id,
            service,
            name,
            status,
            attr,
            text,
            series,
        },
    )
}

fn cap(term: &str) -> &str {
    if term.len() <= MAX_TERM_BYTES {
        return term;
    }
    let mut end = MAX_TERM_BYTES;
    while !term.is_char_boundary(end) {
        end -= 1;
    }
    &term[..end]
}

/// The `series` term of a row.
pub fn series_term(signal: Signal, service: &str, kind: &str, name: &str) -> String {
    let sep = SERIES_SEPARATOR;
    let t = match signal {
        Signal::Spans => format!("{service}{sep}{kind}{sep}{name}"),
        Signal::Logs => service.to_string(),
        _ => format!("{service}{sep}{name}"),
    };
    cap(&t).to_string()
}

/// The term an attribute equality is indexed (and looked up) as.
pub fn attribute_term(key: &str, value: &str) -> String {
    let mut t = String::with_capacity(key.len() + value.len() + 1);
    t.push_str(key);
    t.push('=');
    t.push_str(value);
    cap(&t).to_string()
}

/// Terms of one granule, deduplicated before they reach tantivy.
#[derive(Default)]
struct GranuleTerms {
    trace_id: HashSet<String>,
    service: HashSet<String>,
    name: HashSet<String>,
    status: HashSet<String>,
    attr: HashSet<String>,
    text: HashSet<String>,
    series: HashSet<String>,
}

fn dict_text(batch: &RecordBatch, column: &str) -> Option<Vec<Option<String>>> {
    let a = batch.column_by_name(column)?;
    let reader = oxeye_model::DictReader::new(a.as_ref())?;
    Some(
        (0..batch.num_rows())
            .map(|i| reader.opt(i).map(str::to_string))
            .collect(),
    )
}

fn add_map_terms(set: &mut HashSet<String>, map: &MapArray, row: usize) {
    let offsets = map.value_offsets();
    let keys = map.keys().as_dictionary_opt::<Int32Type>();
    let key_values = keys.and_then(|k| k.values().as_string_opt::<i32>());
    let plain_keys = map.keys().as_string_opt::<i32>();
    let values = map.values().as_string_opt::<i32>();
    let (Some(values), true) = (values, key_values.is_some() || plain_keys.is_some()) else {
        return;
    };
    for i in offsets[row] as usize..offsets[row + 1] as usize {
        if values.is_null(i) {
            continue;
        }
        let key = match (keys, key_values, plain_keys) {
            (Some(k), Some(kv), _) => kv.value(k.keys().value(i) as usize),
            (_, _, Some(p)) => p.value(i),
            _ => continue,
        };
        set.insert(attribute_term(key, values.value(i)));
    }
}

/// Builds the index of a sorted segment batch and returns its bundle.
pub fn build(
    signal: Signal,
    batch: &RecordBatch,
    granule_rows: usize,
    scratch: &Path,
) -> Result<Vec<u8>, StoreError> {
    let granule_rows = granule_rows.max(1);
    let dir = tempfile::Builder::new()
        .prefix("index-")
        .tempdir_in(scratch)
        .map_err(|e| StoreError::io("creating an index build directory", scratch, e))?;
    let (schema, f) = schema();
    let index = Index::create_in_dir(dir.path(), schema)
        .map_err(|e| StoreError::index("creating an index", e))?;
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, WRITER_MEMORY)
        .map_err(|e| StoreError::index("opening an index writer", e))?;

    let rows = batch.num_rows();
    let service = dict_text(batch, "service_name");
    let name = dict_text(batch, "name");
    let kind = match signal {
        Signal::Spans => dict_text(batch, "kind"),
        _ => None,
    };
    let status = match signal {
        Signal::Spans => dict_text(batch, "status_code"),
        Signal::Logs => dict_text(batch, "severity_text"),
        _ => None,
    };
    let trace_ids = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>());
    let attrs = batch
        .column_by_name("attributes")
        .and_then(|c| c.as_map_opt());
    let resource_attrs = batch
        .column_by_name("resource_attributes")
        .and_then(|c| c.as_map_opt());
    let body = batch
        .column_by_name("body")
        .and_then(|c| c.as_string_opt::<i32>());
    let status_message = batch
        .column_by_name("status_message")
        .and_then(|c| c.as_string_opt::<i32>());
    let events = batch
        .column_by_name("events")
        .and_then(|c| c.as_list_opt::<i32>());
    let event_names = events.and_then(|l: &ListArray| {
        l.values()
            .as_any()
            .downcast_ref::<StructArray>()
            .and_then(|s| s.column_by_name("name"))
            .and_then(|n| n.as_any().downcast_ref::<StringArray>())
    });

    let mut start = 0;
    let mut granule: u64 = 0;
    while start < rows {
        let end = (start + granule_rows).min(rows);
        let mut t = GranuleTerms::default();
        for row in start..end {
            if let Some(ids) = trace_ids
                && ids.is_valid(row)
            {
                t.trace_id.insert(hex::encode(ids.value(row)));
            }
            for (col, set) in [
                (&service, &mut t.service),
                (&name, &mut t.name),
                (&status, &mut t.status),
            ] {
                if let Some(Some(v)) = col.as_ref().map(|c| &c[row]) {
                    set.insert(cap(v).to_string());
                }
            }
            t.series.insert(series_term(
                signal,
                service
                    .as_ref()
                    .and_then(|c| c[row].as_deref())
                    .unwrap_or(""),
                kind.as_ref().and_then(|c| c[row].as_deref()).unwrap_or(""),
                name.as_ref().and_then(|c| c[row].as_deref()).unwrap_or(""),
            ));
            if let Some(m) = attrs {
                add_map_terms(&mut t.attr, m, row);
            }
            if let Some(m) = resource_attrs {
                add_map_terms(&mut t.attr, m, row);
            }
            if let Some(b) = body
                && b.is_valid(row)
            {
                t.text.insert(b.value(row).to_string());
            }
            if let Some(s) = status_message
                && !s.value(row).is_empty()
            {
                t.text.insert(s.value(row).to_string());
            }
            if let (Some(list), Some(names)) = (events, event_names) {
                let offsets = list.value_offsets();
                for e in offsets[row] as usize..offsets[row + 1] as usize {
                    t.text.insert(names.value(e).to_string());
                }
            }
        }
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.granule, granule);
        for (field, set) in [
            (f.trace_id, &t.trace_id),
            (f.service, &t.service),
            (f.name, &t.name),
            (f.status, &t.status),
            (f.attr, &t.attr),
            (f.text, &t.text),
            (f.series, &t.series),
        ] {
            for v in set {
                doc.add_text(field, v);
            }
        }
        writer
            .add_document(doc)
            .map_err(|e| StoreError::index("adding a granule", e))?;
        start = end;
        granule += 1;
    }
    writer
        .commit()
        .map_err(|e| StoreError::index("committing an index", e))?;
    writer
        .wait_merging_threads()
        .map_err(|e| StoreError::index("finishing index merges", e))?;
    bundle_dir(dir.path())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BundleEntry {
    name: String,
    offset: u64,
    len: u64,
}

fn bundle_dir(dir: &Path) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    let mut toc = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io("listing an index directory", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::io("listing an index directory", dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".lock") {
            continue;
        }
        let bytes = std::fs::read(entry.path())
            .map_err(|e| StoreError::io("reading an index file", entry.path(), e))?;
        toc.push(BundleEntry {
            name,
            offset: out.len() as u64,
            len: bytes.len() as u64,
        });
        out.extend_from_slice(&bytes);
    }
    let toc = serde_json::to_vec(&toc)
        .map_err(|e| StoreError::index("writing a bundle table of contents", e))?;
    out.extend_from_slice(&toc);
    out.extend_from_slice(&(toc.len() as u64).to_le_bytes());
    out.extend_from_slice(BUNDLE_MAGIC);
    Ok(out)
}

fn unbundle(bytes: OwnedBytes) -> Result<HashMap<PathBuf, OwnedBytes>, StoreError> {
    let bad = |reason: &str| StoreError::index("reading an index bundle", reason);
    let n = bytes.len();
    if n < 16 || &bytes.as_slice()[n - 8..] != BUNDLE_MAGIC {
        return Err(bad("missing bundle footer"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes.as_slice()[n - 16..n - 8]);
    let toc_len = u64::from_le_bytes(len) as usize;
    if toc_len > n - 16 {
        return Err(bad("table of contents longer than the bundle"));
    }
    let toc_start = n - 16 - toc_len;
    let toc: Vec<BundleEntry> = serde_json::from_slice(&bytes.as_slice()[toc_start..n - 16])
        .map_err(|e| bad(&e.to_string()))?;
    let mut files = HashMap::new();
    for e in toc {
        let (start, end) = (e.offset as usize, (e.offset + e.len) as usize);
        if end > toc_start || start > end {
            return Err(bad("file range outside the bundle"));
        }
        files.insert(PathBuf::from(e.name), bytes.slice(start..end));
    }
    Ok(files)
}

/// A read-only tantivy directory over the files of a bundle held in memory.
#[derive(Clone, Debug)]
struct BundleDirectory {
    files: Arc<HashMap<PathBuf, OwnedBytes>>,
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "segment indexes are read-only",
    )
}

impl Directory for BundleDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        self.files
            .get(path)
            .map(|b| Arc::new(b.clone()) as Arc<dyn FileHandle>)
            .ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_path_buf()))
    }

    fn delete(&self, _path: &Path) -> Result<(), DeleteError> {
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.files.contains_key(path))
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        Err(OpenWriteError::IoError {
            io_error: Arc::new(read_only()),
            filepath: path.to_path_buf(),
        })
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.files
            .get(path)
            .map(|b| b.as_slice().to_vec())
            .ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_path_buf()))
    }

    fn atomic_write(&self, _path: &Path, _data: &[u8]) -> io::Result<()> {
        Err(read_only())
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn watch(&self, _cb: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(WatchHandle::empty())
    }

    fn acquire_lock(&self, _lock: &Lock) -> Result<DirectoryLock, LockError> {
        // Nothing ever writes to a bundle, so readers need no lock file.
        Ok(DirectoryLock::from(Box::new(())))
    }
}

/// What to look up in segment indexes. Hits are granules whose rows *may* match.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexPredicate {
    TraceId([u8; 16]),
    Service(String),
    /// Span name or metric name.
    Name(String),
    /// Span status code or log severity text.
    Status(String),
    /// `attributes[key] = value` or `resource_attributes[key] = value`.
    Attribute {
        key: String,
        value: String,
    },
    /// Words of log bodies, span event names and status messages.
    Text(TextQuery),
    And(Vec<IndexPredicate>),
    Or(Vec<IndexPredicate>),
}

impl IndexPredicate {
    /// Whether, in an index with one row per granule, the granules this predicate finds are
    /// exactly the rows that match it, not a superset. Full-text words and prefixes are: the
    /// index and [`TextQuery::matches`] split text into words alike. Phrases are not (the index
    /// keeps no positions), nor negations or match-all (a granule with no text matches them in
    /// the index, a row with no text does not match in SQL), nor the other predicates (long
    /// values are indexed by a prefix; attribute terms of resources count too).
    pub fn exact_per_row(&self) -> bool {
        match self {
            IndexPredicate::Text(q) => q.ast.exact_per_row(),
            _ => false,
        }
    }

    /// Whether every granule this predicate finds also matches `part` (it is `part`, or a
    /// conjunction that has it).
    pub fn requires(&self, part: &IndexPredicate) -> bool {
        self == part
            || match self {
                IndexPredicate::And(parts) => parts.iter().any(|p| p.requires(part)),
                _ => false,
            }
    }
}

/// An opened segment index.
pub struct SegmentIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    pub bytes: usize,
}

impl SegmentIndex {
    pub fn open(bundle: Vec<u8>) -> Result<SegmentIndex, StoreError> {
        let bytes = bundle.len();
        let files = unbundle(OwnedBytes::new(bundle))?;
        let index = Index::open(BundleDirectory {
            files: Arc::new(files),
        })
        .map_err(|e| StoreError::index("opening a segment index", e))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| StoreError::index("opening an index reader", e))?;
        let (_, fields) = schema();
        Ok(SegmentIndex {
            index,
            reader,
            fields,
            bytes,
        })
    }

    fn term(&self, field: Field, value: &str) -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_text(field, cap(value)),
            IndexRecordOption::Basic,
        ))
    }

    fn to_query(&self, p: &IndexPredicate) -> Box<dyn Query> {
        let f = &self.fields;
        match p {
            IndexPredicate::TraceId(id) => self.term(f.trace_id, &hex::encode(id)),
            IndexPredicate::Service(s) => self.term(f.service, s),
            IndexPredicate::Name(s) => self.term(f.name, s),
            IndexPredicate::Status(s) => self.term(f.status, s),
            IndexPredicate::Attribute { key, value } => {
                self.term(f.attr, &attribute_term(key, value))
            }
            IndexPredicate::Text(q) => self.text_query(&q.ast),
            IndexPredicate::And(ps) => Box::new(BooleanQuery::new(
                ps.iter().map(|p| (Occur::Must, self.to_query(p))).collect(),
            )),
            IndexPredicate::Or(ps) => Box::new(BooleanQuery::new(
                ps.iter()
                    .map(|p| (Occur::Should, self.to_query(p)))
                    .collect(),
            )),
        }
    }

    fn text_query(&self, ast: &TextAst) -> Box<dyn Query> {
        let field = self.fields.text;
        match ast {
            TextAst::Term(t) => self.term(field, t),
            TextAst::Prefix(p) => {
                let mut upper = p.clone();
                upper.push(char::MAX);
                Box::new(RangeQuery::new(
                    Bound::Included(Term::from_field_text(field, p)),
                    Bound::Excluded(Term::from_field_text(field, &upper)),
                ))
            }
            TextAst::Phrase(words) => Box::new(BooleanQuery::new(
                words
                    .iter()
                    .map(|w| (Occur::Must, self.term(field, w)))
                    .collect(),
            )),
            TextAst::And(children) => Box::new(BooleanQuery::new(
                children
                    .iter()
                    .map(|c| (Occur::Must, self.text_query(c)))
                    .collect(),
            )),
            TextAst::Or(children) => Box::new(BooleanQuery::new(
                children
                    .iter()
                    .map(|c| (Occur::Should, self.text_query(c)))
                    .collect(),
            )),
            // A granule is a union of rows, so "not in some row" says nothing about a granule.
            TextAst::Not(_) | TextAst::All => Box::new(AllQuery),
        }
    }

    /// Granules that may hold matching rows, ascending.
    pub fn search(&self, predicate: &IndexPredicate) -> Result<Vec<u32>, StoreError> {
        let searcher = self.reader.searcher();
        let query = self.to_query(predicate);
        searcher
            .search(&*query, &GranuleCollector)
            .map_err(|e| StoreError::index("searching a segment index", e))
    }

    /// Every `series` term starting with `prefix` (see [`series_term`]).
    pub fn series_terms(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let searcher = self.reader.searcher();
        let mut out = Vec::new();
        for segment in searcher.segment_readers() {
            let inverted = segment
                .inverted_index(self.fields.series)
                .map_err(|e| StoreError::index("opening series terms", e))?;
            let mut upper = prefix.as_bytes().to_vec();
            upper.push(0xff);
            let mut stream = inverted
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .lt(&upper)
                .into_stream()
                .map_err(|e| StoreError::index("listing series terms", e))?;
            while stream.advance() {
                out.push(String::from_utf8_lossy(stream.key()).into_owned());
            }
        }
        Ok(out)
    }

    pub fn num_granules(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    #[allow(dead_code)]
    fn index(&self) -> &Index {
        &self.index
    }
}

/// Collects the granule numbers of the documents a query matches, ascending: straight from
/// the `granule` fast column, in document order (a row-level index of logs matches millions of
/// documents for a common word; no set of document addresses is built).
struct GranuleCollector;

impl Collector for GranuleCollector {
    type Fruit = Vec<u32>;
    type Child = GranuleSegmentCollector;

    fn for_segment(
        &self,
        _segment_ord: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<GranuleSegmentCollector> {
        Ok(GranuleSegmentCollector {
            granules: segment.fast_fields().u64("granule")?,
            hits: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<u32>>) -> tantivy::Result<Vec<u32>> {
        let mut all: Vec<u32> = match fruits.len() {
            1 => fruits.into_iter().flatten().collect(),
            _ => fruits.concat(),
        };
        // One index segment yields granules in document order, which is granule order; the
        // sort is for indexes a writer flushed in several pieces.
        if !all.is_sorted() {
            all.sort_unstable();
        }
        all.dedup();
        Ok(all)
    }
}

struct GranuleSegmentCollector {
    granules: tantivy::columnar::Column<u64>,
    hits: Vec<u32>,
}

impl SegmentCollector for GranuleSegmentCollector {
    type Fruit = Vec<u32>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if let Some(g) = self.granules.first(doc) {
            self.hits.push(u32::try_from(g).unwrap_or(u32::MAX));
        }
    }

    fn harvest(self) -> Vec<u32> {
        self.hits
    }
}

// ---- full-text queries ----

/// A parsed full-text query (tantivy's query syntax: words, `"phrases"`, `prefix*`, `AND`, `OR`,
/// `NOT`/`-`, parentheses; words without an operator must all match).
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    pub text: String,
    ast: TextAst,
}

#[derive(Debug, Clone, PartialEq)]
enum TextAst {
    Term(String),
    Prefix(String),
    Phrase(Vec<String>),
    And(Vec<TextAst>),
    Or(Vec<TextAst>),
    Not(Box<TextAst>),
    All,
}

impl TextAst {
    fn exact_per_row(&self) -> bool {
        match self {
            TextAst::Term(_) | TextAst::Prefix(_) => true,
            TextAst::Phrase(_) | TextAst::Not(_) | TextAst::All => false,
            TextAst::And(c) | TextAst::Or(c) => {
                !c.is_empty() && c.iter().all(TextAst::exact_per_row)
            }
        }
    }
}

fn analyzer() -> TextAnalyzer {
    // The same analyzer the index's `text` field uses ("default": simple split, long-token
    // removal, lower case), so that both sides agree on what a word is.
    tantivy::tokenizer::TokenizerManager::default()
        .get("default")
        .unwrap_or_else(|| TextAnalyzer::from(tantivy::tokenizer::SimpleTokenizer::default()))
}

fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stream = analyzer.token_stream(text);
    while let Some(t) = stream.next() {
        out.push(t.text.clone());
    }
    out
}

impl TextQuery {
    pub fn parse(text: &str) -> Result<TextQuery, StoreError> {
        let bad = |reason: String| StoreError::BadTextQuery {
            query: text.to_string(),
            reason,
        };
        // Apostrophes inside words ("can't") would open a quoted phrase in tantivy's grammar;
        // in log search they are part of the text, so they are escaped first.
        let escaped = escape_inner_apostrophes(text);
        let ast = tantivy::query_grammar::parse_query(&escaped)
            .map_err(|_| bad("it is not valid query syntax (words, \"phrases\", prefix*, AND, OR, NOT, parentheses)".into()))?;
        let mut analyzer = analyzer();
        let ast = convert(&ast, &mut analyzer).map_err(bad)?;
        Ok(TextQuery {
            text: text.to_string(),
            ast,
        })
    }

    /// Whether `text` matches, with the same word rules the index uses.
    pub fn matches(&self, text: &str) -> bool {
        let mut analyzer = analyzer();
        let words = tokens(&mut analyzer, text);
        eval(&self.ast, &words)
    }

    /// A matcher that reuses its tokenizer across many rows.
    pub fn matcher(&self) -> TextMatcher<'_> {
        TextMatcher {
            query: self,
            analyzer: analyzer(),
            words: Vec::new(),
        }
    }
}

pub struct TextMatcher<'a> {
    query: &'a TextQuery,
    analyzer: TextAnalyzer,
    words: Vec<String>,
}

impl TextMatcher<'_> {
    pub fn matches(&mut self, text: &str) -> bool {
        self.words.clear();
        let mut stream = self.analyzer.token_stream(text);
        while let Some(t) = stream.next() {
            self.words.push(t.text.clone());
        }
        eval(&self.query.ast, &self.words)
    }
}

/// `can't` -> `can\'t`: an apostrophe between letters or digits is text, not a quote.
fn escape_inner_apostrophes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\'') {
        return std::borrow::Cow::Borrowed(text);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        let inner = *c == '\''
            && i > 0
            && chars[i - 1].is_alphanumeric()
            && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        if inner {
            out.push('\\');
        }
        out.push(*c);
    }
    std::borrow::Cow::Owned(out)
}

fn convert(ast: &UserInputAst, analyzer: &mut TextAnalyzer) -> Result<TextAst, String> {
    match ast {
        UserInputAst::Boost(inner, _) => convert(inner, analyzer),
        UserInputAst::Leaf(leaf) => match &**leaf {
            UserInputLeaf::All => Ok(TextAst::All),
            UserInputLeaf::Literal(lit) => {
                if let Some(field) = &lit.field_name {
                    return Err(format!(
                        "field `{field}:` is not supported inside search(); filter other columns with SQL"
                    ));
                }
                // Unquoted `word*` arrives as a literal ending in `*` (tantivy calls it a
                // wildcard); quoted `"a b"*` sets `prefix`.
                let unquoted = matches!(lit.delimiter, Delimiter::None);
                let (text, prefix) = match lit.phrase.strip_suffix('*') {
                    Some(stem) if unquoted => (stem, true),
                    _ => (lit.phrase.as_str(), lit.prefix),
                };
                if unquoted && text.contains('*') {
                    return Err("only a trailing `*` (prefix search) is supported".into());
                }
                let words = tokens(analyzer, text);
                if prefix && words.len() > 1 {
                    return Err("prefix search works on one word, not on a phrase".into());
                }
                Ok(match (words.len(), prefix) {
                    (0, _) => TextAst::All,
                    (1, false) => TextAst::Term(words[0].clone()),
                    (1, true) => TextAst::Prefix(words[0].clone()),
                    _ => TextAst::Phrase(words),
                })
            }
            UserInputLeaf::Range { .. } => {
                Err("ranges are not supported in full-text search".into())
            }
            UserInputLeaf::Set { .. } => {
                Err("term sets are not supported in full-text search".into())
            }
            UserInputLeaf::Exists { .. } => {
                Err("exists queries are not supported in full-text search".into())
            }
            UserInputLeaf::Regex { .. } => {
                Err("regular expressions are not supported in full-text search".into())
            }
        },
        UserInputAst::Clause(clauses) => {
            let mut musts = Vec::new();
            let mut shoulds = Vec::new();
            for (occur, child) in clauses {
                let c = convert(child, analyzer)?;
                match occur {
                    Some(UserOccur::Should) => shoulds.push(c),
                    Some(UserOccur::MustNot) => musts.push(TextAst::Not(Box::new(c))),
                    Some(UserOccur::Must) | None => musts.push(c),
                }
            }
            // Optional clauses next to required ones change nothing about matching.
            if !shoulds.is_empty() && musts.is_empty() {
                return Ok(or_of(shoulds));
            }
            Ok(match musts.len() {
                0 => TextAst::All,
                1 => musts.remove(0),
                _ => TextAst::And(musts),
            })
        }
    }
}

fn or_of(mut v: Vec<TextAst>) -> TextAst {
    if v.len() == 1 {
        v.remove(0)
    } else {
        TextAst::Or(v)
    }
}

fn eval(ast: &TextAst, words: &[String]) -> bool {
    match ast {
        TextAst::All => true,
        TextAst::Term(t) => words.iter().any(|w| w == t),
        TextAst::Prefix(p) => words.iter().any(|w| w.starts_with(p.as_str())),
        TextAst::Phrase(p) => words.windows(p.len()).any(|win| win == p.as_slice()),
        TextAst::And(c) => c.iter().all(|a| eval(a, words)),
        TextAst::Or(c) => c.iter().any(|a| eval(a, words)),
        TextAst::Not(c) => !eval(c, words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{logs_batch_with_bodies, spans_batch};

    #[test]
    fn text_queries_match_like_users_expect() {
        let q = TextQuery::parse("timeout AND db").unwrap();
        assert!(q.matches("DB connection Timeout after 30s"));
        assert!(!q.matches("timeout talking to cache"));
        let q = TextQuery::parse("timeout db").unwrap();
        assert!(
            q.matches("db timeout"),
            "words without operators must all match"
        );
        let q = TextQuery::parse("\"connection refused\" OR panic*").unwrap();
        assert!(q.matches("error: Connection refused (os error 111)"));
        assert!(q.matches("thread panicked at"));
        assert!(!q.matches("refused connection"));
        let q = TextQuery::parse("error -retry").unwrap();
        assert!(q.matches("error while reading"));
        assert!(!q.matches("error, will retry"));
        assert!(TextQuery::parse("body:x").is_err());
        let q = TextQuery::parse("can't connect").unwrap();
        assert!(q.matches("error: can't connect to db"));
        assert!(!q.matches("can connect"));
        assert!(TextQuery::parse("(unbalanced").is_err());
    }

    #[test]
    fn index_finds_the_granules_that_hold_a_trace_and_a_word() {
        let dir = tempfile::tempdir().unwrap();
        // 100 spans, 10 per trace, in segment order (a trace's spans adjacent).
        let batch =
            crate::segment::sort_for_segment(Signal::Spans, &spans_batch(0, 100).batch).unwrap();
        let bundle = build(Signal::Spans, &batch, 16, dir.path()).unwrap();
        let index = SegmentIndex::open(bundle).unwrap();
        assert_eq!(index.num_granules(), 7);
        let ids = batch
            .column_by_name("trace_id")
            .unwrap()
            .as_any()
            .downcast_ref::<FixedSizeBinaryArray>()
            .unwrap();
        let id: [u8; 16] = ids.value(35).try_into().unwrap();
        let mut expected: Vec<u32> = (0..ids.len())
            .filter(|i| ids.value(*i) == id)
            .map(|i| (i / 16) as u32)
            .collect();
        expected.dedup();
        assert_eq!((0..ids.len()).filter(|i| ids.value(*i) == id).count(), 10);
        let g = index.search(&IndexPredicate::TraceId(id)).unwrap();
        assert_eq!(g, expected);
        assert!(
            g.len() <= 2,
            "ten adjacent rows touch at most two granules of 16"
        );
        let none = index.search(&IndexPredicate::TraceId([9; 16])).unwrap();
        assert!(none.is_empty());
        let svc = index
            .search(&IndexPredicate::Service("svc-1".into()))
            .unwrap();
        let ops = index.series_terms("svc-1\u{1f}").unwrap();
        let want: Vec<String> = (0..5)
            .map(|i| format!("svc-1\u{1f}UNSPECIFIED\u{1f}op-{i}"))
            .collect();
        assert_eq!(ops, want);
        assert!(!svc.is_empty());
        let attr = index
            .search(&IndexPredicate::Attribute {
                key: "http.request.method".into(),
                value: "GET".into(),
            })
            .unwrap();
        assert_eq!(attr.len(), 7);

        let logs =
            logs_batch_with_bodies(&["all good", "db timeout here", "fine", "fine again"]).batch;
        let bundle = build(Signal::Logs, &logs, 2, dir.path()).unwrap();
        let index = SegmentIndex::open(bundle).unwrap();
        let hit = index
            .search(&IndexPredicate::Text(TextQuery::parse("timeout").unwrap()))
            .unwrap();
        assert_eq!(hit, vec![0]);
        let prefix = index
            .search(&IndexPredicate::Text(TextQuery::parse("fin*").unwrap()))
            .unwrap();
        assert_eq!(prefix, vec![1]);
    }

    #[test]
    fn a_row_level_index_finds_exactly_the_matching_lines_for_exact_queries() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = [
            "DB timeout after 30s",
            "timeout talking to cache",
            "",
            "db.query: timeout",
            "talking to db",
            "timeouts everywhere",
            "talking; timeout; db",
            "Connection refused",
        ];
        let logs = logs_batch_with_bodies(&bodies).batch;
        let bundle = build(Signal::Logs, &logs, 1, dir.path()).unwrap();
        let index = SegmentIndex::open(bundle).unwrap();
        for (text, exact) in [
            ("timeout AND db", true),
            ("timeout db", true),
            ("timeout OR refused", true),
            ("timeout*", true),
            ("talking AND (db OR cache)", true),
            ("\"talking to db\"", false),
            ("timeout -db", false),
            ("*", false),
        ] {
            let query = TextQuery::parse(text).unwrap();
            let predicate = IndexPredicate::Text(query.clone());
            assert_eq!(predicate.exact_per_row(), exact, "{text}");
            let found = index.search(&predicate).unwrap();
            let matching: Vec<u32> = (0..bodies.len() as u32)
                .filter(|i| query.matches(bodies[*i as usize]))
                .collect();
            if exact {
                assert_eq!(found, matching, "{text}");
            } else {
                assert!(
                    matching.iter().all(|row| found.contains(row)),
                    "{text}: {found:?} must hold {matching:?}"
                );
            }
        }
        let both = IndexPredicate::And(vec![
            IndexPredicate::Service("api".into()),
            IndexPredicate::Text(TextQuery::parse("db").unwrap()),
        ]);
        assert!(both.requires(&IndexPredicate::Text(TextQuery::parse("db").unwrap())));
        assert!(!both.requires(&IndexPredicate::Text(TextQuery::parse("talking").unwrap())));
    }

    #[test]
    fn corrupt_bundles_are_errors() {
        assert!(SegmentIndex::open(b"nope".to_vec()).is_err());
        let mut b = vec![0u8; 32];
        b.extend_from_slice(&1000u64.to_le_bytes());
        b.extend_from_slice(BUNDLE_MAGIC);
        assert!(SegmentIndex::open(b).is_err());
    }
}
