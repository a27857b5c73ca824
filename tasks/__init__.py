"""The nine lifecycle stages, one module each: a result record, a plain function, a thin `@task`.

Import a stage from its module (`from prefect_mlops.tasks.gate import quality_gate`); this
package does not import them all, so using one stage never loads another's libraries.
"""
