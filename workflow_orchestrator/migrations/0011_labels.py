from django.db import migrations, models

# A label filter is a containment test (labels @> '{"customer": "acme"}'), which a GIN index
# with jsonb_path_ops answers without reading every workflow. SQLite has no such index: there
# the filter reads the labels of the rows the list's other conditions leave.
CREATE_INDEX = (
    "CREATE INDEX IF NOT EXISTS workflow_labels ON workflow_orchestrator_workflow USING gin (labels jsonb_path_ops)"
)
DROP_INDEX = "DROP INDEX IF EXISTS workflow_labels"


def _on_postgresql(statement):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("workflow_orchestrator", "0010_definition_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflow",
            name="labels",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Up to 20 string keys and values to find it by (e.g. customer: acme); a list filters on "
                "them with ?label=key:value.",
            ),
        ),
        migrations.RunPython(_on_postgresql(CREATE_INDEX), _on_postgresql(DROP_INDEX)),
    ]
