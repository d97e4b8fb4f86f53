"""Every alarm of the stack goes off the same way: above a threshold, quiet when the metric has no data."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm as data: it goes off when ``metric`` is above ``threshold`` in ``datapoints_to_alarm`` of the
    last ``evaluation_periods`` periods (all of them when None)."""

    id: str
    description: str
    metric: cloudwatch.IMetric
    threshold: float
    evaluation_periods: int = 1
    datapoints_to_alarm: int | None = None


def alarm(scope: Construct, spec: AlarmSpec) -> cloudwatch.Alarm:
    """``spec`` as a CloudWatch alarm in ``scope``; a period without data is not a breach (a quiet stack is fine)."""
    return cloudwatch.Alarm(
        scope,
        spec.id,
        alarm_description=spec.description,
        metric=spec.metric,
        threshold=spec.threshold,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluation_periods=spec.evaluation_periods,
        datapoints_to_alarm=spec.datapoints_to_alarm,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
