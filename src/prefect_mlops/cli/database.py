"""The PostgreSQL database a Prefect server is pointed at: made when it does not exist yet."""

from __future__ import annotations

import asyncio


def ensure_database(url: str | None) -> str | None:
    """Create the PostgreSQL database named in `url` when it is missing; returns what was done, or None.

    SQLite (or no URL) needs nothing: Prefect creates the file. When the database cannot be created
    (the user may not create databases, the server does not answer), the command stops with the
    exact statement to run.
    """
    if not url:
        return None
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("postgresql") or not parsed.database:
        return None
    import asyncpg

    name = parsed.database
    host, port, user = parsed.host or "127.0.0.1", parsed.port or 5432, parsed.username or "postgres"
    where = f"the PostgreSQL server at {host}:{port}"
    create = (f"createdb -h {host} -p {port} -U {user} {name}   "
              f"(or: psql -h {host} -p {port} -U {user} -d postgres -c 'CREATE DATABASE \"{name}\"')")

    async def connect(database: str) -> asyncpg.Connection:
        return await asyncpg.connect(host=host, port=port, user=user, password=parsed.password,
                                     database=database, timeout=10)

    async def run() -> str | None:
        try:
            connection = await connect(name)
        except asyncpg.InvalidCatalogNameError:
            pass  # missing: made below
        except asyncpg.PostgresError as exc:
            raise SystemExit(f"cannot connect to database {name!r} on {where} as {user!r} "
                             f"({type(exc).__name__}: {exc}); fix --database-url") from exc
        else:
            await connection.close()
            return None
        try:
            maintenance = await connect("postgres")
        except Exception as exc:
            raise SystemExit(f"database {name!r} does not exist on {where}, and connecting to its 'postgres' "
                             f"database to create it failed ({type(exc).__name__}: {exc}); create it with: "
                             f"{create}") from exc
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            await maintenance.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return None  # made by someone else meanwhile
        except Exception as exc:
            raise SystemExit(f"database {name!r} does not exist on {where} and user {user!r} could not create "
                             f"it ({type(exc).__name__}: {exc}); create it with: {create}") from exc
        finally:
            await maintenance.close()
        return f"created database {name!r} on {where}"

    try:
        return asyncio.run(run())
    except (OSError, asyncio.TimeoutError) as exc:
        raise SystemExit(f"cannot reach {where} for database {name!r} ({type(exc).__name__}: {exc}); start "
                         f"PostgreSQL or fix --database-url") from exc
