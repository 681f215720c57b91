//! Accept lists: the content types a consumer is willing to decode.

use std::collections::BTreeSet;

/// Content types that kombu always trusts, whatever the accept list says.
pub const ALWAYS_TRUSTED: [&str; 2] = ["application/data", "application/text"];

/// A set of accepted content types.
///
/// Usually built by [`Registry::accept`](crate::Registry::accept) from serializer names or
/// content types. [`ALWAYS_TRUSTED`] types are allowed whether or not they are in the set.
///
/// ```
/// use kombu_serializers::Registry;
/// let accept = Registry::default().accept(["json"])?;
/// assert!(accept.allows("application/json"));
/// assert!(accept.allows("application/data")); // always trusted
/// assert!(!accept.allows("application/x-python-serialize"));
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    content_types: BTreeSet<String>,
    strict: bool,
}

impl Accept {
    /// Builds an accept set from content types taken as they are (no name lookup).
    pub fn from_content_types<I, S>(content_types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Accept {
            content_types: content_types.into_iter().map(Into::into).collect(),
            strict: false,
        }
    }

    /// Whether `content_type` may be decoded: it is in the set or, unless the set is
    /// [strict](Self::strict), is one of [`ALWAYS_TRUSTED`]. Content types are compared
    /// exactly, as kombu does.
    pub fn allows(&self, content_type: &str) -> bool {
        (!self.strict && ALWAYS_TRUSTED.contains(&content_type))
            || self.content_types.contains(content_type)
    }

    /// The same set without kombu's implicit trust in [`ALWAYS_TRUSTED`]: only the listed
    /// content types are allowed. [`Registry::accept`](crate::Registry::accept) returns a
    /// strict set when it names only signing serializers, so that a consumer requiring
    /// signatures does not take an unsigned `application/text` message.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Whether the set is [strict](Self::strict).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// The content types in the set, in sorted order (without the implicit
    /// [`ALWAYS_TRUSTED`] ones unless they were added explicitly).
    pub fn content_types(&self) -> impl Iterator<Item = &str> {
        self.content_types.iter().map(String::as_str)
    }

    /// Number of content types explicitly in the set.
    pub fn len(&self) -> usize {
        self.content_types.len()
    }

    /// Whether no content type was added explicitly (only [`ALWAYS_TRUSTED`] types are allowed).
    pub fn is_empty(&self) -> bool {
        self.content_types.is_empty()
    }

    /// Adds one content type (taken as it is).
    pub fn insert(&mut self, content_type: impl Into<String>) {
        self.content_types.insert(content_type.into());
    }
}

impl<S: Into<String>> FromIterator<S> for Accept {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Accept::from_content_types(iter)
    }
}
