variable "hosts" {
  description = "Control plane instances: a name and the host gateways and operators reach it at. Several share one etcd cluster."
  type = list(object({
    name        = string
    host        = string
    listen_host = optional(string, "0.0.0.0")
  }))
  validation {
    condition     = length(var.hosts) > 0 && length(distinct([for h in var.hosts : h.name])) == length(var.hosts)
    error_message = "hosts needs at least one instance, each with a distinct name."
  }
}

variable "etcd_endpoints" {
  description = "etcd endpoints (e.g. https://etcd-1:2379). Empty: the embedded store in data_dir (one instance only; development)."
  type        = list(string)
  default     = []
}

variable "port" {
  description = "Admin API and gateway sync port (TCP)."
  type        = number
  default     = 7400
}

variable "dns_port" {
  description = "DNS discovery port (UDP and TCP) answering SRV queries for live gateways; 0 disables it."
  type        = number
  default     = 53
}

variable "dns_zone" {
  description = "The zone the control plane answers for (delegate it to the instances)."
  type        = string
  default     = "nexus.local"
}

variable "lease_ttl" {
  description = "How long a silent gateway stays in discovery, e.g. 10s."
  type        = string
  default     = "10s"
}

variable "admin_auth" {
  description = "`required` (Admin API calls need an admin key or certificate) or `off` (development only)."
  type        = string
  default     = "required"
  validation {
    condition     = contains(["required", "off"], var.admin_auth)
    error_message = "admin_auth must be required or off."
  }
}

variable "ca_cert_pem" {
  description = "The cluster CA: gateways and admins present certificates from it. Empty: plaintext (loopback or --insecure only)."
  type        = string
  default     = ""
}

variable "cert_pem" {
  description = "The control plane's certificate (`nexus certs --control-plane HOST`)."
  type        = string
  default     = ""
}

variable "key_pem" {
  description = "Key of cert_pem."
  type        = string
  default     = ""
  sensitive   = true
}

variable "etcd_ca_file" {
  description = "CA file of etcd's server certificate on the hosts (https:// endpoints)."
  type        = string
  default     = ""
}

variable "binary" {
  description = "Path of the nexus binary on the hosts."
  type        = string
  default     = "/usr/local/bin/nexus"
}

variable "config_dir" {
  description = "Directory of the certificates on the hosts."
  type        = string
  default     = "/etc/nexus"
}

variable "data_dir" {
  description = "Directory of the embedded store and the bootstrap admin key."
  type        = string
  default     = "/var/lib/nexus/control-plane"
}

variable "admin_cidrs" {
  description = "Sources allowed to reach the Admin API port: operators and every gateway."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "dns_cidrs" {
  description = "Sources allowed to query DNS discovery."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "extra_args" {
  description = "More `nexus control-plane` flags."
  type        = list(string)
  default     = []
}
