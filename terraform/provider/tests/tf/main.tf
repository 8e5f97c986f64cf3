# The configuration tests/terraform.rs drives (apply, plan, drift, import, an incompatible
# schema, destroy) and tests/provider.tftest.hcl runs with `terraform test`, against a control
# plane the Rust test starts.

terraform {
  required_providers {
    nexus = { source = "nexus/nexus" }
  }
}

variable "control_plane" { type = string }
variable "admin_key_file" { type = string }

variable "suffix" {
  description = "Appended to every name, so that `terraform test` and the Rust test do not collide."
  type        = string
  default     = ""
}

variable "policy" {
  type    = string
  default = "pinned"
}

variable "definition" {
  description = "The schema's JSON Schema text (default: an object with a required string id)."
  type        = string
  default     = ""
}

locals {
  definition = var.definition != "" ? var.definition : jsonencode({
    type                 = "object"
    properties           = { id = { type = "string" } }
    required             = ["id"]
    additionalProperties = false
  })
}

variable "cert_names" {
  description = "The key's certificate names (default: tf<suffix>.client.nexus)."
  type        = list(string)
  default     = null
}

variable "compatibility" {
  type    = string
  default = "BACKWARD"
}

provider "nexus" {
  control_plane  = var.control_plane
  admin_key_file = var.admin_key_file
}

resource "nexus_region" "a" {
  name = "tf-a${var.suffix}"
}

resource "nexus_region" "b" {
  name = "tf-b${var.suffix}"
}

resource "nexus_route" "r" {
  name          = "tf-route${var.suffix}"
  subjects      = ["tf${var.suffix}.>"]
  policy        = var.policy
  pinned_region = var.policy == "pinned" ? nexus_region.a.name : ""
  failover      = [nexus_region.b.name]
  consistency   = "async"
  description   = "made by terraform"
}

resource "nexus_schema" "s" {
  subject       = "tf${var.suffix}.created"
  definition    = local.definition
  compatibility = var.compatibility
  enforcement   = "warn"
}

resource "nexus_api_key" "k" {
  name          = "tf-key${var.suffix}"
  publish       = ["tf${var.suffix}.>"]
  subscribe     = ["tf${var.suffix}.>"]
  msgs_per_sec  = 50
  expires_at_ms = 4102444800000
  cert_names    = var.cert_names != null ? var.cert_names : ["tf${var.suffix}.client.nexus"]
}

resource "nexus_ca" "ca" {
  common_name = "tf test CA"
}

resource "nexus_gateway_certificate" "g" {
  ca_cert_pem = nexus_ca.ca.cert_pem
  ca_key_pem  = nexus_ca.ca.key_pem
  region      = nexus_region.a.name
  gateway_id  = "gw-1"
  hosts       = ["127.0.0.1", "gw1.example"]
}

data "nexus_topology" "t" {
  depends_on = [nexus_region.a, nexus_region.b]
}

output "route_version" { value = nexus_route.r.version }
output "key_id" { value = nexus_api_key.k.id }
output "regions" { value = data.nexus_topology.t.regions }
