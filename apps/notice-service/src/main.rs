//! notice-service (port 8763, table `notice`): the classic notice API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /notice` | every notice |
//! | `GET /notice/{receiver_id}` | that receiver's notices, newest first |
//! | `GET /notice/latest/{receiver_id}` | that receiver's newest 10 |
//! | `GET /notice/previous/{receiver_id}/{id}` | the next 10 older than `{id}` |
//! | `POST /notice` `{"receiver_id","sender_id","article_id"}` | 201, or 400 |
//! | `GET /notice/service/host` | the host name of this replica |

#![forbid(unsafe_code)]

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shoal_app::db::shared;
use shoal_app::{ApiError, AppState, FieldError, Migrations, Service, validate};
use sqlx::Row;
use sqlx::migrate::Migrator;
use std::sync::LazyLock;

// Services may share one database (and its migration table): versions are
// numbered per service (story 1xxx, notice 2xxx) and each ignores the others'.
static SQLITE: LazyLock<Migrator> = LazyLock::new(|| shared(sqlx::migrate!("migrations/sqlite")));
static MYSQL: LazyLock<Migrator> = LazyLock::new(|| shared(sqlx::migrate!("migrations/mysql")));
static POSTGRES: LazyLock<Migrator> =
    LazyLock::new(|| shared(sqlx::migrate!("migrations/postgres")));

/// `SELECT <the columns of a notice> FROM notice<rest>`, as one literal.
macro_rules! select_notices {
    ($rest:literal) => {
        concat!(
            "SELECT id, receiver_id, sender_id, article_id FROM notice",
            $rest
        )
    };
}

/// One notice, fields in the classic order.
#[derive(Serialize)]
struct Notice {
    id: i64,
    receiver_id: String,
    sender_id: String,
    article_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNotice {
    receiver_id: String,
    sender_id: String,
    article_id: i32,
}

fn router() -> Router<AppState> {
    Router::new()
        .route("/notice", get(all).post(create))
        .route("/notice/{receiver_id}", get(by_receiver))
        .route("/notice/latest/{receiver_id}", get(latest))
        .route("/notice/previous/{receiver_id}/{id}", get(previous))
        .route("/notice/service/host", get(host))
}

fn notices(rows: Vec<sqlx::any::AnyRow>) -> Result<Json<Vec<Notice>>, ApiError> {
    rows.iter()
        .map(|r| {
            Ok(Notice {
                id: r.try_get(0)?,
                receiver_id: r.try_get(1)?,
                sender_id: r.try_get(2)?,
                article_id: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Json)
        .map_err(ApiError::from)
}

async fn all(State(s): State<AppState>) -> Result<Json<Vec<Notice>>, ApiError> {
    let sql = s.db.sql(select_notices!(" ORDER BY id"));
    notices(sqlx::query(sql).fetch_all(s.db.pool()?).await?)
}

/// The notices of one receiver, newest first; only the 10 newest if `latest`.
async fn of_receiver(
    s: &AppState,
    p: Result<Path<String>, PathRejection>,
    latest: bool,
) -> Result<Json<Vec<Notice>>, ApiError> {
    let Path(receiver) = p?;
    validate::path_param("receiver_id", &receiver, 20)?;
    let sql = if latest {
        s.db.sql(select_notices!(
            " WHERE receiver_id = ? ORDER BY id DESC LIMIT 10"
        ))
    } else {
        s.db.sql(select_notices!(" WHERE receiver_id = ? ORDER BY id DESC"))
    };
    notices(
        sqlx::query(sql)
            .bind(receiver)
            .fetch_all(s.db.pool()?)
            .await?,
    )
}

async fn by_receiver(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Notice>>, ApiError> {
    of_receiver(&s, p, false).await
}

async fn latest(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<Notice>>, ApiError> {
    of_receiver(&s, p, true).await
}

async fn previous(
    State(s): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Vec<Notice>>, ApiError> {
    let Path((receiver, before)) = p?;
    validate::path_param("receiver_id", &receiver, 20)?;
    let before: i64 = before.parse().map_err(|_| {
        ApiError::invalid(vec![FieldError::new(
            "id",
            format!("must be a whole number (got {before:?})"),
        )])
    })?;
    let sql = s.db.sql(select_notices!(
        " WHERE receiver_id = ? AND id < ? ORDER BY id DESC LIMIT 10"
    ));
    notices(
        sqlx::query(sql)
            .bind(receiver)
            .bind(before)
            .fetch_all(s.db.pool()?)
            .await?,
    )
}

async fn create(
    State(s): State<AppState>,
    body: Result<Json<NewNotice>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(n) = body?;
    let mut errors = Vec::new();
    validate::text("receiver_id", &n.receiver_id, 20, &mut errors);
    validate::text("sender_id", &n.sender_id, 20, &mut errors);
    validate::finish(errors)?;
    let sql =
        s.db.sql("INSERT INTO notice (receiver_id, sender_id, article_id) VALUES (?, ?, ?)");
    sqlx::query(sql)
        .bind(n.receiver_id)
        .bind(n.sender_id)
        .bind(n.article_id)
        .execute(s.db.pool()?)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn host(State(s): State<AppState>) -> String {
    s.hostname.to_string()
}

fn main() -> anyhow::Result<()> {
    shoal_app::main(Service {
        name: "notice-service",
        port: 8763,
        routes: &["/notice"],
        migrations: Migrations {
            sqlite: &SQLITE,
            mysql: &MYSQL,
            postgres: &POSTGRES,
        },
        router,
    })
}
