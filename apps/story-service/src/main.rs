//! story-service (port 8768, table `story`): the classic story API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /story` | the newest 15 stories |
//! | `GET /story/{id}` | the newest ≤ 5 stories of user `{id}` |
//! | `POST /story` `{"id","message"}` | 201, or 400 naming the bad field |
//! | `DELETE /story/{id}` | 200, every story of user `{id}` deleted |
//! | `GET /story/service/host` | the host name of this replica |

#![forbid(unsafe_code)]

use axum::Json;
use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shoal_app::db::shared;
use shoal_app::{ApiError, AppState, Migrations, Service, validate};
use sqlx::Row;
use sqlx::migrate::Migrator;
use std::sync::LazyLock;

// Services may share one database (and its migration table): versions are
// numbered per service (story 1xxx, notice 2xxx) and each ignores the others'.
static SQLITE: LazyLock<Migrator> = LazyLock::new(|| shared(sqlx::migrate!("migrations/sqlite")));
static MYSQL: LazyLock<Migrator> = LazyLock::new(|| shared(sqlx::migrate!("migrations/mysql")));
static POSTGRES: LazyLock<Migrator> =
    LazyLock::new(|| shared(sqlx::migrate!("migrations/postgres")));

/// One story, fields in the classic order.
#[derive(Serialize)]
struct Story {
    story_id: i64,
    message: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewStory {
    id: String,
    message: String,
}

fn router() -> Router<AppState> {
    Router::new()
        .route("/story", get(latest).post(create))
        .route("/story/{id}", get(by_user).delete(delete_by_user))
        .route("/story/service/host", get(host))
}

fn stories(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<Story>, ApiError> {
    rows.iter()
        .map(|r| {
            Ok(Story {
                story_id: r.try_get(0)?,
                message: r.try_get(1)?,
                id: r.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(ApiError::from)
}

async fn latest(State(s): State<AppState>) -> Result<Json<Vec<Story>>, ApiError> {
    let sql =
        s.db.sql("SELECT story_id, message, ID FROM story ORDER BY story_id DESC LIMIT 15");
    let rows = sqlx::query(sql).fetch_all(s.db.pool()?).await?;
    Ok(Json(stories(rows)?))
}

async fn by_user(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Vec<Story>>, ApiError> {
    let Path(id) = id?;
    validate::path_param("id", &id, 20)?;
    let sql = s
        .db
        .sql("SELECT story_id, message, ID FROM story WHERE ID = ? ORDER BY story_id DESC LIMIT 5");
    let rows = sqlx::query(sql).bind(id).fetch_all(s.db.pool()?).await?;
    Ok(Json(stories(rows)?))
}

async fn create(
    State(s): State<AppState>,
    body: Result<Json<NewStory>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(story) = body?;
    let mut errors = Vec::new();
    validate::text("id", &story.id, 20, &mut errors);
    validate::optional_text("message", &story.message, 300, &mut errors);
    validate::finish(errors)?;
    let sql = s.db.sql("INSERT INTO story (ID, message) VALUES (?, ?)");
    sqlx::query(sql)
        .bind(story.id)
        .bind(story.message)
        .execute(s.db.pool()?)
        .await?;
    Ok(StatusCode::CREATED)
}

async fn delete_by_user(
    State(s): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    validate::path_param("id", &id, 20)?;
    let sql = s.db.sql("DELETE FROM story WHERE ID = ?");
    sqlx::query(sql).bind(id).execute(s.db.pool()?).await?;
    Ok(StatusCode::OK)
}

async fn host(State(s): State<AppState>) -> String {
    s.hostname.to_string()
}

fn main() -> anyhow::Result<()> {
    shoal_app::main(Service {
        name: "story-service",
        port: 8768,
        routes: &["/story"],
        migrations: Migrations {
            sqlite: &SQLITE,
            mysql: &MYSQL,
            postgres: &POSTGRES,
        },
        router,
    })
}
