//! The database a URL names, opened with the transport's rules: the driver's options from the
//! URL (kombu's own removed), a 10 s server selection, journaled writes, reads from the
//! primary, and a `ping` so a wrong address fails at once. The transport's connections open
//! theirs here, and so does what keeps documents of its own beside the queues (the Celery
//! beat's lease and runs).

use kombu_core::{BrokerUrl, Error, Result};
use mongodb::bson::doc;
use mongodb::options::{
    ClientOptions, DatabaseOptions, ReadPreference, SelectionCriteria, WriteConcern,
};
use mongodb::{Client, Database};

use crate::errors::{Op, driver_error};
use crate::options::{DEFAULT_SERVER_SELECTION_TIMEOUT, Options};

/// A database opened from a `mongodb://` or `mongodb+srv://` URL as the transport opens its
/// own (see the crate documentation for the URL).
#[derive(Debug, Clone)]
pub struct MongoDatabase {
    db: Database,
    label: String,
}

impl MongoDatabase {
    /// Opens the database `url` names (its path, else `default_database`, else
    /// `kombu_default`) and checks that the server answers.
    ///
    /// ```no_run
    /// # async fn run() -> kombu_core::Result<()> {
    /// let db = kombu_mongodb::MongoDatabase::open("mongodb://127.0.0.1:27017/jobs").await?;
    /// assert_eq!(db.database().name(), "jobs");
    /// # Ok(()) }
    /// ```
    pub async fn open(url: &str) -> Result<MongoDatabase> {
        let parsed = BrokerUrl::parse(url)?;
        let options = Options::from_url(&parsed)?;
        Self::open_with(&options, parsed.masked(), |_| {}).await
    }

    /// Opens `options`' database; `configure` sets what the caller adds to the client's
    /// options (the transport's link watcher).
    pub(crate) async fn open_with(
        options: &Options,
        label: String,
        configure: impl FnOnce(&mut ClientOptions),
    ) -> Result<MongoDatabase> {
        let connect_err = |what: &'static str| {
            let label = label.clone();
            move |e| driver_error(&label, what, Op::Read, e)
        };
        let mut client_options = ClientOptions::parse(options.connection.clone())
            .await
            .map_err(connect_err("resolve the connection string"))?;
        if client_options.server_selection_timeout.is_none() {
            client_options.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION_TIMEOUT);
        }
        // A write the server acknowledged must survive the server's crash: journaled writes
        // unless the URL chooses a write concern (`w`, `journal`, `wtimeoutMS`).
        if client_options.write_concern.is_none() {
            client_options.write_concern = Some(WriteConcern::builder().journal(true).build());
        }
        if client_options.app_name.is_none() {
            client_options.app_name = Some("kombu-rs".to_owned());
        }
        configure(&mut client_options);
        let client =
            Client::with_options(client_options).map_err(connect_err("make the client"))?;
        // Every read from the primary, whatever the URL's readPreference: a take reads what
        // its own update just leased, and a stale secondary would strand leases.
        let db = client.database_with_options(
            &options.database,
            DatabaseOptions::builder()
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .build(),
        );
        // The server answers (or the connection fails here, not at the first operation).
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(connect_err("connect"))?;
        Ok(MongoDatabase { db, label })
    }

    /// The driver's database handle.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The URL with its password masked: how errors name the server.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The driver's error `err` of the operation `what` as kombu-rs's: recoverable when the
    /// server is away or a primary steps down, and, for a write (`write`), marked
    /// [outcome unknown](Error::outcome_unknown) when the reply was lost after the request
    /// was sent.
    pub fn error(&self, what: &str, write: bool, err: mongodb::error::Error) -> Error {
        let op = if write { Op::Write } else { Op::Read };
        driver_error(&self.label, what, op, err)
    }
}
