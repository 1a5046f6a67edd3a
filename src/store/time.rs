//! How a time column is bound and read on each backend, so that the domain keeps one type.
//!
//! The application counts time in [`Millis`] (ms since the Unix epoch, from its
//! [`Clock`](crate::clock::Clock)). SQLite stores that integer as it is. PostgreSQL stores a
//! native `timestamptz` (migration 0004): readable in `psql`, comparable with `now()`, and with
//! µs precision, so every millisecond survives the round trip (the refresh grace window is
//! inclusive to the ms). [`Ts`] is the one type the SQL layer binds and decodes for a time
//! column; row types keep `Millis` fields and read them through it (`#[sqlx(try_from = "Ts")]`,
//! or [`OptTs`] for a nullable column).
//!
//! On PostgreSQL the binary wire format of `timestamptz` is an `i64` of µs since 2000-01-01 UTC;
//! sqlx asks for binary results on every prepared statement, which is how every query of the
//! store runs. The text format (simple-query protocol, never used here) is refused rather than
//! parsed.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Type, ValueRef};

use crate::clock::Millis;

/// A time column's value: [`Millis`] in Rust, INTEGER ms on SQLite, `timestamptz` on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ts(pub Millis);

/// A nullable time column, for `#[sqlx(try_from = "OptTs")]` on an `Option<Millis>` field (the
/// derive needs a local type to convert from; binds use `Option<Ts>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptTs(pub Option<Millis>);

impl From<Ts> for Millis {
    fn from(t: Ts) -> Millis {
        t.0
    }
}

impl From<OptTs> for Option<Millis> {
    fn from(t: OptTs) -> Option<Millis> {
        t.0
    }
}

/// The Unix epoch on PostgreSQL's time line (µs since 2000-01-01T00:00:00Z).
const UNIX_EPOCH_PG_US: i64 = -946_684_800_000_000;
/// `timestamptz`'s type OID (pg_type.dat).
const TIMESTAMPTZ_OID: Oid = Oid(1184);

impl Type<Postgres> for Ts {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(TIMESTAMPTZ_OID)
    }
}

impl Encode<'_, Postgres> for Ts {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        let us = self.0.checked_mul(1000).and_then(|us| us.checked_add(UNIX_EPOCH_PG_US));
        let us = us.ok_or_else(|| format!("time {} ms is out of timestamptz range", self.0))?;
        <i64 as Encode<Postgres>>::encode_by_ref(&us, buf)
    }

    fn size_hint(&self) -> usize {
        std::mem::size_of::<i64>()
    }
}

impl Decode<'_, Postgres> for Ts {
    fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
        if value.format() != PgValueFormat::Binary {
            return Err("timestamptz in text format: the store reads times in binary only".into());
        }
        let us = <i64 as Decode<Postgres>>::decode(value)?;
        // Floor to the ms: the store only ever writes whole milliseconds.
        Ok(Ts((us - UNIX_EPOCH_PG_US).div_euclid(1000)))
    }
}

impl Type<Postgres> for OptTs {
    fn type_info() -> PgTypeInfo {
        <Ts as Type<Postgres>>::type_info()
    }
}

impl<'r> Decode<'r, Postgres> for OptTs {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.is_null() {
            return Ok(OptTs(None));
        }
        Ok(OptTs(Some(<Ts as Decode<Postgres>>::decode(value)?.0)))
    }
}

impl Type<Sqlite> for Ts {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Sqlite> for Ts {
    fn encode_by_ref(&self, args: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode_by_ref(&self.0, args)
    }
}

impl<'r> Decode<'r, Sqlite> for Ts {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Ts(<i64 as Decode<Sqlite>>::decode(value)?))
    }
}

impl Type<Sqlite> for OptTs {
    fn type_info() -> SqliteTypeInfo {
        <Ts as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <Ts as Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Sqlite> for OptTs {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.is_null() {
            return Ok(OptTs(None));
        }
        Ok(OptTs(Some(<Ts as Decode<Sqlite>>::decode(value)?.0)))
    }
}
