//! The beat's lease and runs on MongoDB ([`MongoStore`]).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use kombu_core::{Error, ErrorKind, Result};
use kombu_mongodb::MongoDatabase;
use mongodb::Collection;
use mongodb::bson::{self, Bson, DateTime, Document, doc};

use super::store::{BeatStore, Run, lease_lost};

/// The collection of beat documents.
pub(crate) const COLLECTION: &str = "kombu_rs.beat";

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// On MongoDB (the broker's, say): one document per schedule in the collection
/// `kombu_rs.beat` of the URL's database, `{_id: <name>, owner, expires, runs: {<entry>:
/// {scheduled, sent}}}` (an entry name's `.`, `$` and `%` percent-encoded, an empty one `%`).
/// Several instances on any machines share it.
///
/// Taking the lease is one update that matches only while the lease is free (expired, or no
/// expiry at all) or the taker's own, with an upsert for the first beat: a second beat's
/// upsert hits the document's `_id` and is refused (duplicate key), so two never both take
/// it. Recording a run is one update that matches only while the recorder holds the lease
/// and it has not expired, so a beat that lost it cannot record (nor send).
///
/// The expiry is a date written and compared by the beats' own clocks (SecantusDB, which the
/// tests run on, compares dates wrongly inside `$expr`, so the server's `$$NOW` is not used):
/// keep the beats' clocks in sync (NTP), as the transport's visibility timeout already asks.
/// A clock ahead by more than the lease takes it early; the holder then cannot record, so no
/// run is recorded twice, but a send already started may overlap the new leader's resend of
/// the same run (the same task id).
#[derive(Clone)]
pub struct MongoStore {
    db: MongoDatabase,
    beats: Collection<Document>,
    name: String,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.label())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An entry name as a field name: `.` would nest and a leading `$` is an operator, so those
/// (and `%`, the escape) are percent-encoded; an empty name (no field name) is a lone `%`,
/// which no encoding makes otherwise.
fn field(entry: &str) -> String {
    if entry.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(entry.len());
    for c in entry.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '$' => out.push_str("%24"),
            c => out.push(c),
        }
    }
    out
}

/// The entry name of a field written by [`field`].
fn entry_of(field: &str) -> String {
    if field == "%" {
        return String::new();
    }
    field
        .replace("%2E", ".")
        .replace("%24", "$")
        .replace("%25", "%")
}

/// `now + ttl` as a BSON date (milliseconds).
fn expiry(now: DateTime, ttl: Duration) -> DateTime {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(now.timestamp_millis().saturating_add(ttl.max(1)))
}

impl MongoStore {
    /// Connects to MongoDB at `url` (`mongodb://` or `mongodb+srv://`, read as the transport
    /// reads it: the database is the URL's path, else `default_database`, else
    /// `kombu_default`) for the schedule `name`.
    pub async fn connect(url: &str, name: &str) -> Result<MongoStore> {
        let db = MongoDatabase::open(url).await?;
        let beats = db.database().collection(COLLECTION);
        Ok(MongoStore {
            db,
            beats,
            name: name.to_owned(),
        })
    }

    fn err(&self, what: &'static str, write: bool) -> impl FnOnce(mongodb::error::Error) -> Error {
        let db = self.db.clone();
        move |e| db.error(&format!("beat state: {what}"), write, e)
    }
}

#[async_trait]
impl BeatStore for MongoStore {
    async fn lease(&self, owner: &str, ttl: Duration) -> Result<bool> {
        let now = DateTime::now();
        let taken = self
            .beats
            .update_one(
                doc! {
                    "_id": &self.name,
                    // Expired, or no date at all (a document cleared by hand).
                    "$or": [{ "owner": owner }, { "expires": { "$not": { "$gt": now } } }],
                },
                doc! { "$set": { "owner": owner, "expires": expiry(now, ttl) } },
            )
            .upsert(true)
            .await;
        match taken {
            Ok(_) => Ok(true),
            // The document exists and another holds the lease: the upsert's insert collided.
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(self.err("take the lease", true)(e)),
        }
    }

    async fn release(&self, owner: &str) -> Result<()> {
        self.beats
            .update_one(
                doc! { "_id": &self.name, "owner": owner },
                doc! { "$set": { "expires": DateTime::from_millis(0) } },
            )
            .await
            .map_err(self.err("release the lease", true))?;
        Ok(())
    }

    async fn runs(&self) -> Result<HashMap<String, Run>> {
        let found = self
            .beats
            .find_one(doc! { "_id": &self.name })
            .projection(doc! { "runs": 1 })
            .await
            .map_err(self.err("read runs", false))?;
        let runs = match found.and_then(|mut d| d.remove("runs")) {
            None => return Ok(HashMap::new()),
            Some(Bson::Document(runs)) => runs,
            Some(other) => {
                return Err(Error::new(
                    ErrorKind::Codec,
                    format!(
                        "beat state: {:?} in {COLLECTION} on {}: runs is no document: {other}",
                        self.name,
                        self.db.label()
                    ),
                ));
            }
        };
        runs.into_iter()
            .map(|(key, value)| {
                let entry = entry_of(&key);
                let value = value.into_relaxed_extjson();
                Ok((entry.clone(), Run::from_value(&entry, &value)?))
            })
            .collect()
    }

    async fn record(&self, owner: &str, entry: &str, run: Run) -> Result<()> {
        let value = bson::to_bson(&run.to_value()).map_err(|e| {
            Error::new(
                ErrorKind::Codec,
                format!("beat state: the run of {entry:?}"),
            )
            .with_source(e)
        })?;
        let recorded = self
            .beats
            .update_one(
                doc! {
                    "_id": &self.name,
                    "owner": owner,
                    "expires": { "$gt": DateTime::now() },
                },
                doc! { "$set": { format!("runs.{}", field(entry)): value } },
            )
            .await
            .map_err(self.err("record a run", true))?;
        if recorded.matched_count == 0 {
            return Err(lease_lost(&format!(
                "{} in {COLLECTION} on {}",
                self.name,
                self.db.label()
            )));
        }
        Ok(())
    }
}

/// Whether the write failed on a duplicate `_id`.
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind as Kind, WriteFailure};
    match e.kind.as_ref() {
        Kind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        Kind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_survive_as_field_names() {
        for name in ["tick", "a.b", "$set", "100%", "%2E", "x.$%y", "", "%"] {
            let f = field(name);
            assert!(
                !f.is_empty() && !f.contains('.') && !f.starts_with('$'),
                "{name} → {f}"
            );
            assert_eq!(entry_of(&f), name);
        }
    }
}
