"""On-demand hourly prices of SageMaker instances, read at run time from the AWS Price List API
(pricing:GetProducts), with the date each price took effect, for any project's `--plan`.

    price = hourly_price(session.client("pricing", region_name=PRICING_REGION), "ml.c5.xlarge", "us-east-1", "Tsform")
    price.usd, price.effective_date, price.vcpus     # or None when it cannot be read: point at PRICING_PAGE

The response shape (AWS Billing docs, "Reading the service price list file" and the GetProducts API
reference): `PriceList` is a list of JSON strings, one product each:
`{"product": {"productFamily", "attributes": {"instanceName", "regionCode", "usagetype", "vCpu", ...}, "sku"},
  "terms": {"OnDemand": {"<sku>.<offerTermCode>": {"effectiveDate", "priceDimensions":
  {"<rateCode>": {"unit": "Hrs", "pricePerUnit": {"USD": "0.2040000000"}, ...}}}}}, ...}`.

SageMaker prices each use of an instance as its own product, told apart by the usage type's middle part:
`<region prefix>-<use>:<instance>`, e.g. USE1-Host:ml.m5.xlarge (real-time hosting), USE1-Train:... (training),
USE1-Tsform:... (Batch Transform; see TRANSFORM).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

PRICING_PAGE = "https://aws.amazon.com/sagemaker/pricing/"
PRICING_REGION = "us-east-1"  # the Price List API's endpoint; it prices every region
SERVICE_CODE = "AmazonSageMaker"

HOST, TRAIN = "Host", "Train"
# Batch Transform's usage type is <prefix>-Tsform:<instance> (USE1-Tsform:ml.c5.9xlarge in a published SageMaker
# cost guide, vpullela-powers' sagemaker-cost-optimization.md; the offer file's products for it carry
# platoinstancetype "BatchTransform", per ec2instances.info's scraper of that file). No AWS page stating the
# usage type could be read from this offline workplace: if it is wrong, no product matches and the plan shows
# the formula and PRICING_PAGE instead of a price, never another use's price.
TRANSFORM = "Tsform"


class PriceUnavailable(Exception):
    """No price could be read; the message says why (no credentials, no access, no such product)."""


@dataclass(frozen=True)
class HourlyPrice:
    usd: float            # per instance-hour, on demand
    effective_date: str | None  # the OnDemand offer term's effectiveDate (ISO 8601), None if the term has none
    usage_type: str       # the product's usagetype, e.g. USE1-Tsform:ml.c5.xlarge
    vcpus: int | None     # the product's vCpu attribute, when present and a whole number

    @property
    def day(self) -> str:
        """The effective date's day (2024-05-01 of 2024-05-01T00:00:00Z), or "undated"."""
        return self.effective_date[:10] if self.effective_date else "undated"


def find_hourly_price(pricing: Any, instance_type: str, region: str, use: str) -> HourlyPrice:
    """The on-demand price per hour of `instance_type` in `region` for `use` (HOST, TRAIN, TRANSFORM): the first
    product whose usage type ends in -<use>:<instance> and one of whose OnDemand price dimensions is per hour.
    Raises PriceUnavailable naming why none could be read."""
    filters = [{"Type": "TERM_MATCH", "Field": "instanceName", "Value": instance_type},
               {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    suffix = f"-{use}:{instance_type}"
    try:
        for page in pricing.get_paginator("get_products").paginate(ServiceCode=SERVICE_CODE, Filters=filters):
            for item in page.get("PriceList", []):
                found = _hourly(json.loads(item), suffix)
                if found:
                    return found
    except NoCredentialsError as err:
        raise PriceUnavailable(f"no AWS credentials to call pricing:GetProducts ({err})") from err
    except ClientError as err:
        error = err.response.get("Error", {})
        raise PriceUnavailable(f"pricing:GetProducts refused: {error.get('Code')}: {error.get('Message')}") from err
    except BotoCoreError as err:
        raise PriceUnavailable(f"pricing:GetProducts failed: {err}") from err
    except (KeyError, ValueError, TypeError) as err:
        raise PriceUnavailable(f"a GetProducts PriceList item is not the documented shape ({err!r})") from err
    raise PriceUnavailable(f"the Price List API has no on-demand hourly product *{suffix} in {region}")


def hourly_price(pricing: Any, instance_type: str, region: str, use: str) -> HourlyPrice | None:
    """find_hourly_price, or None when it cannot be read (a plan then points at PRICING_PAGE)."""
    try:
        return find_hourly_price(pricing, instance_type, region, use)
    except PriceUnavailable:
        return None


def _hourly(product: dict, suffix: str) -> HourlyPrice | None:
    attributes = product["product"]["attributes"]
    usage_type = attributes.get("usagetype", "")
    if not usage_type.endswith(suffix):
        return None
    for term in product["terms"].get("OnDemand", {}).values():
        for dimension in term["priceDimensions"].values():
            if dimension.get("unit", "").lower().startswith("hr"):
                vcpus = attributes.get("vCpu", "")
                return HourlyPrice(float(dimension["pricePerUnit"]["USD"]), term.get("effectiveDate"), usage_type,
                                   int(vcpus) if vcpus.isdigit() else None)
    return None
