variable "region" {
  description = "Region name: a DNS label such as eu-west."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.region))
    error_message = "region must be a DNS label: 1-63 of a-z, 0-9, '-', '_' (starting with a letter or digit)."
  }
}

variable "control_plane_url" {
  description = "The control plane's Admin/sync address gateways register with, e.g. https://cp.example:7400."
  type        = string
}

variable "gateways" {
  description = "The region's gateways: id, the host adapters and peers reach it at, and its ports."
  type = list(object({
    id              = string
    host            = string
    listen_host     = optional(string, "0.0.0.0")
    adapter_port    = optional(number, 7422)
    metrics_port    = optional(number, 9090)
    federation_port = optional(number, 7430)
  }))
  validation {
    condition     = length(var.gateways) > 0 && length(distinct([for g in var.gateways : g.id])) == length(var.gateways)
    error_message = "gateways needs at least one gateway, each with a distinct id."
  }
}

variable "ca_cert_pem" {
  description = "The cluster CA (nexus_ca.cert_pem or ca.pem of `nexus certs`). Empty: no TLS, no federation links."
  type        = string
  default     = ""
}

variable "certificates" {
  description = "Per gateway id: its certificate and key (nexus_gateway_certificate or `nexus certs --gateway`)."
  type = map(object({
    cert_pem = string
    key_pem  = string
  }))
  default   = {}
  sensitive = true
}

variable "control_plane_ca_file" {
  description = "CA file of an https:// control plane (default: the cluster CA written by this module)."
  type        = string
  default     = ""
}

variable "auth" {
  description = "API keys required (`required`) or not (`off`, development only)."
  type        = string
  default     = "required"
  validation {
    condition     = contains(["required", "off"], var.auth)
    error_message = "auth must be required or off."
  }
}

variable "binary" {
  description = "Path of the nexus binary on the hosts."
  type        = string
  default     = "/usr/local/bin/nexus"
}

variable "config_dir" {
  description = "Directory of the environment file and certificates on the hosts."
  type        = string
  default     = "/etc/nexus"
}

variable "state_dir" {
  description = "State directory (config snapshot, replication spool) on the hosts."
  type        = string
  default     = "/var/lib/nexus"
}

variable "dns_zone" {
  description = "Zone adapters resolve _nexus._tcp.<region>.<zone> in."
  type        = string
  default     = "nexus.local"
}

variable "dns_ttl" {
  description = "TTL of the published SRV records, in seconds."
  type        = number
  default     = 30
}

variable "adapter_cidrs" {
  description = "Sources allowed to reach the adapter port (TCP)."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "peer_cidrs" {
  description = "Sources allowed to reach the federation port (UDP, QUIC): the other gateways."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "monitoring_cidrs" {
  description = "Sources allowed to reach /metrics, /healthz and /readyz (TCP)."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "insecure" {
  description = "Serve adapters in plaintext on non-loopback addresses (gateways without certificates need it; development only)."
  type        = bool
  default     = false
}

variable "extra_args" {
  description = "More `nexus gateway` flags, appended to every gateway's command line."
  type        = list(string)
  default     = []
}
