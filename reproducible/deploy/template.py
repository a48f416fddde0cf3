"""The CloudFormation template: instance role and profile, the signing KMS key, a closed security
group and a launch template with Nitro Enclaves on. AMI, instance type and network are parameters;
nothing is looked up at generation time."""

from __future__ import annotations

from typing import Any

from reproducible.deploy.key_policy import key_policy
from reproducible.deploy.release import Release

__all__ = ["cloudformation_template"]


def cloudformation_template(releases: list[Release], instance_type: str) -> dict[str, Any]:
    """The template as a JSON-ready dict (CloudFormation accepts JSON)."""
    versions = ", ".join(r.version for r in releases)
    policy = key_policy(
        releases, parent={"Fn::GetAtt": ["ParentRole", "Arn"]}, admin={"Ref": "AdminPrincipalArn"}
    )
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"Sentinel parent instance and signing key bound to release(s) {versions}",
        "Parameters": {
            "ImageId": {
                "Type": "AWS::EC2::Image::Id",
                "Description": "AMI of the parent instance (Amazon Linux 2023 with aws-nitro-enclaves-cli)",
            },
            "InstanceType": {
                "Type": "String",
                "Default": instance_type,
                "Description": "Nitro Enclaves capable type with the vCPUs the CPU layout was made for",
            },
            "VpcId": {"Type": "AWS::EC2::VPC::Id"},
            "SubnetId": {"Type": "AWS::EC2::Subnet::Id"},
            "AdminPrincipalArn": {
                "Type": "String",
                "Description": "IAM principal that manages the key and encrypts the signing key "
                "into it; it can never decrypt",
                "AllowedPattern": "arn:aws[a-z-]*:iam::[0-9]{12}:.+",
            },
        },
        "Resources": {
            "ParentRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "AssumeRolePolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "ec2.amazonaws.com"},
                                "Action": "sts:AssumeRole",
                            }
                        ],
                    },
                    "Description": "The parent instance; decrypts the signing key only for an "
                    "attested enclave (see the key policy)",
                },
            },
            "ParentInstanceProfile": {
                "Type": "AWS::IAM::InstanceProfile",
                "Properties": {"Roles": [{"Ref": "ParentRole"}]},
            },
            "SigningKey": {
                "Type": "AWS::KMS::Key",
                "Properties": {
                    "Description": f"Sentinel signing key, released only to measured enclaves ({versions})",
                    "KeySpec": "SYMMETRIC_DEFAULT",
                    "KeyUsage": "ENCRYPT_DECRYPT",
                    "EnableKeyRotation": True,
                    "KeyPolicy": policy,
                },
            },
            "ParentSecurityGroup": {
                "Type": "AWS::EC2::SecurityGroup",
                "Properties": {
                    "GroupDescription": "Sentinel parent: nothing inbound; HTTPS out (KMS, nodes)",
                    "VpcId": {"Ref": "VpcId"},
                    "SecurityGroupEgress": [
                        {
                            "IpProtocol": "tcp",
                            "FromPort": 443,
                            "ToPort": 443,
                            "CidrIp": "0.0.0.0/0",
                            "Description": "KMS and RPC nodes over HTTPS",
                        }
                    ],
                },
            },
            "ParentLaunchTemplate": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {
                    "LaunchTemplateData": {
                        "ImageId": {"Ref": "ImageId"},
                        "InstanceType": {"Ref": "InstanceType"},
                        "EnclaveOptions": {"Enabled": True},
                        "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["ParentInstanceProfile", "Arn"]}},
                        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
                        "NetworkInterfaces": [
                            {
                                "DeviceIndex": 0,
                                "SubnetId": {"Ref": "SubnetId"},
                                "Groups": [{"Ref": "ParentSecurityGroup"}],
                                "AssociatePublicIpAddress": False,
                            }
                        ],
                    }
                },
            },
        },
        "Outputs": {
            "SigningKeyArn": {"Value": {"Fn::GetAtt": ["SigningKey", "Arn"]}},
            "ParentRoleArn": {"Value": {"Fn::GetAtt": ["ParentRole", "Arn"]}},
            "LaunchTemplateId": {"Value": {"Ref": "ParentLaunchTemplate"}},
        },
    }
