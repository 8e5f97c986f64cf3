variable "nexus_bin" {
  description = "The nexus binary (e.g. target/release/nexus)."
  type        = string
  default     = "nexus"
}

variable "base_port" {
  description = "First loopback port used: the control plane's Admin API; DNS is base+1, gateway ports follow from base+10."
  type        = number
  default     = 17400
}

variable "work_dir" {
  description = "Where processes keep their state, logs and pid files (default: .run next to this file)."
  type        = string
  default     = ""
}

variable "regions" {
  description = "Region names; each gets gateways_per_region gateways."
  type        = list(string)
  default     = ["eu-west", "us-east", "ap-south"]
}

variable "gateways_per_region" {
  type    = number
  default = 2
}
