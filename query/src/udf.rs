//! `search(column, 'query')`: full-text match with the same word rules as the index, so that
//! rows the index admits are checked exactly (and memtable rows, which have no index yet).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use oxeye_store::TextQuery;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SearchUdf {
    signature: Signature,
}

impl SearchUdf {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(SearchUdf {
            signature: Signature::any(2, Volatility::Immutable),
        })
    }
}

fn text_values(array: &ArrayRef, query: &TextQuery) -> Result<BooleanArray> {
    let mut matcher = query.matcher();
    let mut out = BooleanBuilder::with_capacity(array.len());
    macro_rules! each {
        ($iter:expr) => {
            for v in $iter {
                out.append_option(v.map(|s| matcher.matches(s)));
            }
        };
    }
    match array.data_type() {
        DataType::Utf8 => each!(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => each!(array.as_string::<i64>().iter()),
        DataType::Utf8View => each!(array.as_string_view().iter()),
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            let values = text_values(dict.values(), query)?;
            let keys = dict.normalized_keys();
            for (i, k) in keys.iter().enumerate() {
                if dict.keys().is_null(i) || values.is_null(*k) {
                    out.append_null();
                } else {
                    out.append_value(values.value(*k));
                }
            }
        }
        other => return exec_err!("search() needs a text column, got {other}"),
    }
    Ok(out.finish())
}

impl ScalarUDFImpl for SearchUdf {
    fn name(&self) -> &str {
        "search"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args.get(1) {
            Some(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null) => {
                Ok(DataType::Boolean)
            }
            _ => plan_err!("search(column, 'query') takes a text column and a text query"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, query] = args.args.as_slice() else {
            return exec_err!("search() takes two arguments");
        };
        let query = match query {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(q)))
            | ColumnarValue::Scalar(ScalarValue::LargeUtf8(Some(q)))
            | ColumnarValue::Scalar(ScalarValue::Utf8View(Some(q))) => q,
            _ => return exec_err!("the query of search() must be a constant text"),
        };
        let query =
            TextQuery::parse(query).map_err(|e| DataFusionError::Execution(e.to_string()))?;
        match text {
            ColumnarValue::Array(a) => Ok(ColumnarValue::Array(Arc::new(text_values(a, &query)?))),
            ColumnarValue::Scalar(s) => {
                let a = s.to_array_of_size(1)?;
                let v = text_values(&a, &query)?;
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                    (!v.is_null(0)).then(|| v.value(0)),
                )))
            }
        }
    }
}
