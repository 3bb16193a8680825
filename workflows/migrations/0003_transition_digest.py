from django.db import migrations, models


def backfill_digests(apps, schema_editor):
    """Chain the rows written before digests existed, oldest first within each workflow."""
    from workflows.audit import digest

    Transition = apps.get_model("workflows", "Transition")
    previous = {}
    for row in Transition.objects.order_by("workflow_id", "seq").iterator():
        row.digest = digest(row, previous.get(row.workflow_id, ""))
        previous[row.workflow_id] = row.digest
        Transition.objects.filter(pk=row.pk).update(digest=row.digest)


class Migration(migrations.Migration):
    dependencies = [("workflows", "0002_cache_table")]

    operations = [
        migrations.AddField(
            model_name="transition",
            name="digest",
            field=models.CharField(
                default="",
                editable=False,
                help_text="HMAC of this row and the previous row's digest (see workflows.audit).",
                max_length=64,
            ),
            preserve_default=False,
        ),
        migrations.RunPython(backfill_digests, migrations.RunPython.noop),
    ]
